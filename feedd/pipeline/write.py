"""Writers for a run's outputs: records (jsonl, csv, json), rejects, the report. Each file appears whole.

Every file is written to a temporary name in the same folder, fsynced, then renamed, so a reader (a
partner listing its outbox, a consumer watching a directory) never sees half a file. CSV meant for
humans neutralises cells that a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from feedd.durable import fsync_dir, temp_name

_BOOL_TEXT = {True: "true", False: "false"}
LINES_PER_WRITE = 256
_BUFFER = 1024 * 1024  # bytes per write() of records: fewer system calls
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def neutralize(cell: Any) -> Any:
    """`=cmd|...` -> `'=cmd|...`: shown as text by spreadsheets, never executed."""
    if isinstance(cell, str) and cell.startswith(_FORMULA):
        return "'" + cell
    return cell


def _json_default(value: Any) -> Any:
    return str(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default)


def dumps(record: Any) -> str:
    return _ENCODER.encode(record)  # one encoder for every record: json.dumps with options builds one per call


_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_json_default)
_LINE = orjson.OPT_APPEND_NEWLINE
_orjson_dumps = orjson.dumps


def dump_line(record: Any) -> bytes:
    """One record as a UTF-8 JSON line. orjson refuses what JSON text cannot hold as-is (integers past
    64 bits, lone surrogates from a JSON input): those records take the stdlib's escaped form."""
    try:
        return orjson.dumps(record, default=_json_default, option=_LINE)
    except orjson.JSONEncodeError:
        return (_ASCII.encode(record) + "\n").encode()


class AtomicFile:
    """A text file that appears at `path` only on a clean `close()` (temp, fsync, rename, fsync folder)."""

    def __init__(self, path: Path, *, binary: bool = False, sync: bool = True) -> None:
        self.path = path
        self.sync = sync  # False for a run's scratch files: a crash redoes the whole run anyway
        # A name of its own per writer: an earlier worker of the same run (orphaned by a crash) must
        # never share, or rename away, this writer's temporary file.
        self.tmp = path.with_name(temp_name(path.name, f".{os.getpid()}.{secrets.token_hex(4)}.tmp"))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.binary: IO[bytes] | None = open(self.tmp, "wb", buffering=_BUFFER) if binary else None  # noqa: SIM115 - closed in close()
        # text writers get a wrapper; binary ones write bytes to `binary`
        self.file: IO[str] = (open(self.tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
                              if self.binary is None else io.TextIOWrapper(self.binary, encoding="utf-8", newline=""))

    def close(self) -> Path:
        self.file.flush()
        if self.sync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        if self.sync:
            fsync_dir(self.path.parent)
        return self.path

    def append(self, path: Path) -> None:
        """The bytes of the file at `path` added at the end, copied by the kernel."""
        self.file.flush()
        out = self.file.fileno()
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(out, source.fileno(), offset, size - offset)
                if sent == 0:
                    raise OSError(f"{path} shrank while being copied")
                offset += sent

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


class RecordWriter:
    """Records in the pipeline's output format: jsonl, csv (header = schema fields) or a json array."""

    def __init__(self, path: Path, fmt: str, fields: list[str], *, for_humans: bool = False,
                 body: bool = False, ordered: bool = False) -> None:
        # ordered: every record has exactly `fields` as keys, in that order, and no booleans (as a compiled
        # row function makes them for a schema without boolean fields): CSV rows are then the values as-is
        # body: only the records, without a header or brackets, to be joined by `join` (one stretch of a run)
        self.out = AtomicFile(path, binary=fmt != "csv", sync=not body)
        self.body = body
        self.fmt = fmt
        self.fields = fields
        self.count = 0
        self._human = for_humans
        self._csv = csv.writer(self.out.file) if fmt == "csv" else None
        self._bytes = self.out.binary.write if self.out.binary is not None else None
        self._pending: list[bytes] = []
        if self._csv is not None:
            if not body:
                self._csv.writerow(fields)
            self.write = self._write_values if ordered and not for_humans else self._write_csv  # type: ignore[method-assign]
        elif fmt == "json":
            if not body:
                self._bytes(b"[")  # type: ignore[misc]
            self.write = self._write_array  # type: ignore[method-assign]
        else:
            self.write = self._write_line  # type: ignore[method-assign]

    def write(self, record: dict[str, Any]) -> None:
        """Replaced per format in __init__: the per-record path takes no branch."""

    def _write_line(self, record: dict[str, Any]) -> None:
        # dump_line inlined, and lines gathered in a list written every LINES_PER_WRITE: a list append
        # costs less than a call into the file per record, and this runs once per record
        try:
            self._pending.append(_orjson_dumps(record, default=_json_default, option=_LINE))
        except orjson.JSONEncodeError:
            self._pending.append(dump_line(record))
        if len(self._pending) >= LINES_PER_WRITE:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._bytes(b"".join(self._pending))  # type: ignore[misc]
            self._pending.clear()

    def _write_array(self, record: dict[str, Any]) -> None:
        self._bytes((b"\n" if self.count == 0 else b",\n") + dump_line(record)[:-1])  # type: ignore[misc]
        self.count += 1

    def _write_csv(self, record: dict[str, Any]) -> None:
        # csv writes None as an empty cell; booleans are written as JSON and most tools spell them
        values = [_BOOL_TEXT[v] if v.__class__ is bool else v for v in map(record.get, self.fields)]
        self._csv.writerow(map(neutralize, values) if self._human else values)  # type: ignore[union-attr]

    def join(self, bodies: list[Path]) -> None:
        """Add the records of `body` writers' files, in order."""
        for path in bodies:
            if not path.stat().st_size:
                continue
            if self.fmt == "json" and self.count:
                self._bytes(b",")  # type: ignore[misc]
            self._flush()
            self.out.append(path)
            self.count += 1  # json: a comma goes before the next body

    def _write_values(self, record: dict[str, Any]) -> None:
        self._csv.writerow(record.values())  # type: ignore[union-attr]

    def close(self) -> Path:
        self._flush()
        if self.fmt == "json" and not self.body:
            self._bytes(b"\n]\n" if self.count else b"]\n")  # type: ignore[misc]
        return self.out.close()

    def discard(self) -> None:
        self.out.discard()


class RejectWriter:
    """Rejected rows twice: NDJSON `{row, errors, raw}` for the API, and CSV for the partner (original
    columns + `_row` + `_errors`, formulas neutralised)."""

    def __init__(self, ndjson: Path, csv_path: Path, headers: list[str], *, body: bool = False) -> None:
        self.ndjson = AtomicFile(ndjson, sync=not body)
        self.csv_file = AtomicFile(csv_path, sync=not body)
        self.headers = headers
        self._csv = csv.writer(self.csv_file.file)
        if not body:
            self._csv.writerow([*headers, "_row", "_errors"])
        self.count = 0

    def write(self, row: int, errors: list[dict[str, Any]], cells: list[Any]) -> None:
        raw = dict(zip(self.headers, cells, strict=False)) if self.headers else {"cells": cells}
        self.ndjson.file.write(dumps({"row": row, "errors": errors, "raw": raw}) + "\n")
        text = "; ".join(e["message"] for e in errors)
        padded = list(cells) + [""] * (len(self.headers) - len(cells))
        self._csv.writerow([neutralize("" if c is None else c) for c in padded[: len(self.headers)]] + [row, text])
        self.count += 1

    def join(self, bodies: list[tuple[Path, Path]]) -> None:
        """Add the rejects of `body` writers' files (ndjson, csv), in order."""
        for ndjson, csv_path in bodies:
            self.ndjson.append(ndjson)
            self.csv_file.append(csv_path)

    def close(self) -> tuple[Path, Path]:
        return self.ndjson.close(), self.csv_file.close()

    def discard(self) -> None:
        self.ndjson.discard()
        self.csv_file.discard()


def write_json(path: Path, value: Any) -> Path:
    with AtomicFile(path) as f:
        json.dump(value, f.file, ensure_ascii=False, indent=2, default=_json_default)
        f.file.write("\n")
    return path
