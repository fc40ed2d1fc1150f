"""Writers for a run's outputs: records (jsonl, csv, json), rejects, the report. Each file appears whole.

Every file is written to a temporary name in the same folder, fsynced, then renamed, so a reader (a
partner listing its outbox, a consumer watching a directory) never sees half a file. CSV meant for
humans neutralises cells that a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from feedd.durable import fsync_dir

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


class AtomicFile:
    """A text file that appears at `path` only on a clean `close()` (temp, fsync, rename, fsync folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A name of its own per writer: an earlier worker of the same run (orphaned by a crash) must
        # never share, or rename away, this writer's temporary file.
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[str] = open(self.tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()

    def close(self) -> Path:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

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

    def __init__(self, path: Path, fmt: str, fields: list[str], *, for_humans: bool = False) -> None:
        self.out = AtomicFile(path)
        self.fmt = fmt
        self.fields = fields
        self.count = 0
        self._human = for_humans
        self._csv = csv.writer(self.out.file) if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(fields)
        elif fmt == "json":
            self.out.file.write("[")

    def write(self, record: dict[str, Any]) -> None:
        if self._csv is not None:
            values = [record.get(f) for f in self.fields]
            if self._human:
                values = [neutralize(v) for v in values]
            self._csv.writerow(["" if v is None else v for v in values])
        elif self.fmt == "json":
            self.out.file.write(("\n" if self.count == 0 else ",\n") + dumps(record))
        else:
            self.out.file.write(dumps(record) + "\n")
        self.count += 1

    def close(self) -> Path:
        if self.fmt == "json":
            self.out.file.write("\n]\n" if self.count else "]\n")
        return self.out.close()

    def discard(self) -> None:
        self.out.discard()


class RejectWriter:
    """Rejected rows twice: NDJSON `{row, errors, raw}` for the API, and CSV for the partner (original
    columns + `_row` + `_errors`, formulas neutralised)."""

    def __init__(self, ndjson: Path, csv_path: Path, headers: list[str]) -> None:
        self.ndjson = AtomicFile(ndjson)
        self.csv_file = AtomicFile(csv_path)
        self.headers = headers
        self._csv = csv.writer(self.csv_file.file)
        self._csv.writerow([*headers, "_row", "_errors"])
        self.count = 0

    def write(self, row: int, errors: list[dict[str, Any]], cells: list[Any]) -> None:
        raw = dict(zip(self.headers, cells, strict=False)) if self.headers else {"cells": cells}
        self.ndjson.file.write(dumps({"row": row, "errors": errors, "raw": raw}) + "\n")
        text = "; ".join(e["message"] for e in errors)
        padded = list(cells) + [""] * (len(self.headers) - len(cells))
        self._csv.writerow([neutralize("" if c is None else c) for c in padded[: len(self.headers)]] + [row, text])
        self.count += 1

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
