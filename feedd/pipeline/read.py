"""Readers: a spooled input file -> headers and a stream of rows, with limits that hold on hostile input.

Formats: CSV (delimiter and encoding detected), TSV, JSON (a top-level array of objects, streamed),
JSONL; `.gz` and `.zip` (one member) unpacked as streams with byte and ratio caps; workbooks (.xlsx,
.xls, .ods) are read by `feedd.pipeline.workbook`, with the same caps. Memory stays flat
whatever the file size: lines longer than the limit fail the run naming the line instead of being
buffered, and JSON is decoded one object at a time.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import itertools
import json
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from feedd.config.values import FormatConfig

MAX_LINE = 1024 * 1024  # characters in one line (CSV) or one record (JSON/JSONL)
MAX_COLUMNS = 10_000
MAX_UNPACKED = 64 * 1024**3  # bytes out of one .gz/.zip
MAX_RATIO = 200  # unpacked / packed, past the first 10 MiB: more is a bomb
SNIFF_BYTES = 64 * 1024
_BLOCK = 256 * 1024  # characters read at a time


class ReadError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Detected:
    format: str  # csv | tsv | json | jsonl
    encoding: str
    delimiter: str | None
    compression: str | None  # gzip | zip | None
    sheet: str | None = None  # the sheet read, for a workbook

    def as_dict(self) -> dict[str, Any]:
        found = {"format": self.format, "encoding": self.encoding, "delimiter": self.delimiter,
                 "compression": self.compression}
        return found if self.sheet is None else {**found, "sheet": self.sheet}


class _Capped(io.RawIOBase):
    """A byte stream that fails once more than `limit` bytes, or more than `ratio` x the packed size, came out."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, packed: int) -> None:
        self._inner = inner
        self._packed = max(packed, 1)
        self._out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._out += n
        if self._out > MAX_UNPACKED or (self._out > 10 * 1024**2 and self._out > MAX_RATIO * self._packed):
            raise ReadError("unreadable_input", f"the archive unpacks to more than {MAX_RATIO}x its size "
                                                f"or {MAX_UNPACKED} bytes: refused as a decompression bomb")
        return n


def _unpack(path: Path) -> tuple[IO[bytes], str | None, str]:
    """(byte stream, compression, inner name) for `path`, unpacking .gz and single-member .zip."""
    packed = path.stat().st_size
    with open(path, "rb") as probe:
        magic = probe.read(4)
    if magic[:2] == b"\x1f\x8b":
        return io.BufferedReader(_Capped(gzip.open(path, "rb"), packed)), "gzip", path.name.removesuffix(".gz")
    if magic == b"PK\x03\x04":
        check_zip_directory(path)
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ReadError("unreadable_input", f"not a readable zip file: {exc}") from None
        members = [i for i in archive.infolist() if not i.is_dir()]
        if len(members) != 1:
            raise ReadError("unreadable_input", f"a zip must hold exactly one file, this one holds {len(members)}")
        # The member's name is only used to guess its format: nothing is ever extracted to a path.
        return io.BufferedReader(_Capped(archive.open(members[0]), packed)), "zip", members[0].filename
    return open(path, "rb"), None, path.name


MAX_ZIP_ENTRIES = 16  # a zip holds one input; a few more entries (folders, macOS metadata) are tolerated
MAX_ZIP_DIRECTORY = 256 * 1024  # bytes of central directory: one entry with the longest name fits
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def check_zip_directory(path: Path, most: int = MAX_ZIP_ENTRIES, largest: int = MAX_ZIP_DIRECTORY) -> None:
    """Refuse a zip whose end record lists more than `most` entries, or a central directory over `largest` bytes,
    before `zipfile` reads that whole directory into memory and builds an object per entry (a 52 MB
    zip listing a million entries takes hundreds of MiB that way). Read from the record at the end of
    the file, as `zipfile` finds it; a file without one is left to `zipfile` to call unreadable."""
    with open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        back = min(size, _EOCD.size + 65535)  # the record and the longest archive comment
        f.seek(size - back)
        tail = f.read(back)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            return
        _, _, _, _, entries, directory, _, _ = _EOCD.unpack_from(tail, at)
        if at >= _ZIP64_LOCATOR.size and tail[at - _ZIP64_LOCATOR.size:][:4] == b"PK\x06\x07":
            _, _, where, _ = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
            f.seek(where)
            record = f.read(_ZIP64_EOCD.size)
            if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
                _, _, _, _, _, _, _, entries, directory, _ = _ZIP64_EOCD.unpack(record)
    if entries > most:
        raise ReadError("unreadable_input", f"a zip must hold exactly one file; this one lists {entries} entries "
                                            f"(refused unread above {most})" if most == MAX_ZIP_ENTRIES else
                                            f"the zip lists {entries} entries (refused unread above {most})")
    if directory > largest:
        raise ReadError("unreadable_input", f"the zip's directory is {directory} bytes, more than "
                                            f"{largest}{' for one file' if largest == MAX_ZIP_DIRECTORY else ''}: "
                                            "refused unread")


def _encoding(head: bytes, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 4:  # a character cut at the end of the sample
            return "utf-8"
    try:
        head.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _format(name: str, text_head: str, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    lower = name.lower()
    for ext in ("jsonl", "ndjson", "json", "tsv", "csv"):
        if lower.endswith("." + ext):
            return {"ndjson": "jsonl"}.get(ext, ext)
    stripped = text_head.lstrip()
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        return "jsonl"
    return "csv"


def _delimiter(text_head: str, wanted: str, fmt: str) -> str:
    if fmt == "tsv":
        return "\t"
    if wanted != "auto":
        return wanted
    return detect_delimiter(text_head)


DELIMITERS = ",;\t|"  # in order of preference when two fit equally well
SNIFF_LINES = 50


def detect_delimiter(sample: str) -> str:
    """The delimiter of a CSV sample: the candidate found the same non-zero number of times, outside
    quotes, on the most of its first lines (more columns, then `DELIMITERS` order, break ties); `,`
    when none is found.

    Linear in the sample, and every step is a C-level string method: `csv.Sniffer` tries regexes whose
    backtracking is quadratic on crafted text (seconds for a few KiB, holding the GIL)."""
    # Quotes split the sample into text outside quotes (even pieces) and quoted text (odd pieces):
    # delimiters and line ends count only outside. A doubled "" inside a quoted field splits into an
    # empty outside piece, which changes nothing.
    outside = "".join(sample.split('"')[::2])
    lines = outside.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(lines) > 1 and not sample.endswith(("\n", "\r")):
        lines.pop()  # the sample ends mid-line: that line's counts would be short
    lines = [line for line in lines[:SNIFF_LINES] if line.strip()]
    best, best_score = ",", (0.0, 0, 0)
    for rank, candidate in enumerate(reversed(DELIMITERS)):
        counts = [line.count(candidate) for line in lines]
        seen = [c for c in counts if c]
        if not seen:
            continue
        usual = max(set(seen), key=seen.count)  # the most frequent non-zero count
        score = (counts.count(usual) / len(counts), usual, rank)
        if score > best_score:
            best, best_score = candidate, score
    return best


def _lines(text: IO[str]) -> Iterator[str]:
    """Lines with a length limit enforced while reading, so one huge line never sits in memory.

    Text is read in blocks and split by `StringIO` (the same line ends as the file's own readline with
    `newline=""`); the lines of a block are handed on as a list, so the caller's loop runs at C speed and
    this generator resumes once per block, not once per line."""
    return itertools.chain.from_iterable(_line_blocks(text))


def _line_blocks(text: IO[str]) -> Iterator[list[str]]:
    carry, number = "", 0
    while True:
        block = text.read(_BLOCK)
        if not block:
            if carry:
                yield [carry]
            return
        if "\x00" in block:
            block = block.replace("\x00", "")
        lines = io.StringIO(carry + block, newline="").readlines()
        # The last piece may be cut mid-line (or between \r and \n): it waits for the next block.
        carry = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        if lines and max(map(len, lines)) > MAX_LINE:
            long = next(i for i, line in enumerate(lines) if len(line) > MAX_LINE)
            raise ReadError("line_too_long", f"line {number + long + 1} is longer than {MAX_LINE} characters")
        number += len(lines)
        if len(carry) > MAX_LINE:
            raise ReadError("line_too_long", f"line {number + 1} is longer than {MAX_LINE} characters")
        yield lines


def open_rows(path: Path, fmt: FormatConfig) -> tuple[Detected, list[str], Rows]:
    """Detect the format and return (detected, headers, rows). Rows are (row number, cells)."""
    from feedd.pipeline import workbook  # it reads with this module's errors and caps

    if workbook.is_workbook(path.name, fmt.type):
        return workbook.open_sheet(path, fmt)
    raw, compression, name = _unpack(path)
    try:
        with _read_errors():
            head = raw.peek(SNIFF_BYTES)[:SNIFF_BYTES] if isinstance(raw, io.BufferedReader) else b""
        if b"\x00" in head[:8192] and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise ReadError("unreadable_input", "this looks like a binary file, not CSV or JSON text")
        encoding = _encoding(head, fmt.encoding)
        text_head = head.decode(encoding, errors="replace")
        kind = _format(name, text_head, fmt.type)
        delimiter = _delimiter(text_head, fmt.delimiter, kind) if kind in ("csv", "tsv") else None
    except BaseException:
        raw.close()
        raise
    text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
    detected = Detected(kind, encoding, delimiter, compression)
    try:
        with _read_errors():
            if kind in ("csv", "tsv"):
                headers, rows = _csv_rows(text, delimiter or ",", fmt)
            else:
                headers, rows = _json_rows(text, kind)
    except BaseException:
        text.close()
        raise
    return detected, headers, Rows(rows, text)


@contextlib.contextmanager
def _read_errors() -> Iterator[None]:
    """Decoding and CSV errors, as the run-level error a partner can act on."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ReadError("unreadable_input", f"bytes that are not valid {exc.encoding}: {exc.reason}") from None
    except csv.Error as exc:
        raise ReadError("unreadable_input", f"CSV could not be read: {exc}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        # a truncated or corrupt archive, found while unpacking it as a stream
        raise ReadError("unreadable_input", f"the compressed file is damaged or cut short: {exc}") from None


class _Span(io.RawIOBase):
    """Bytes `start` to `end` of a file, read as the JSON array `[` + those bytes + `]`."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._file.seek(start)
        self._left = end - start
        self._pending = b"["
        self._closing = b"]"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            if self._left > 0:
                self._pending = self._file.read(min(self._left, len(buffer)))
                if not self._pending:
                    raise ReadError("input_missing", "the input is shorter than its recorded span")
                self._left -= len(self._pending)
            else:
                self._pending, self._closing = self._closing, b""
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def open_span(path: Path, start: int, end: int, before: int, headers: list[str]) -> Rows:
    """The rows of one stretch of a UTF-8 JSON array of objects: bytes `start` to `end` hold whole
    elements, `before` elements come earlier in the file (rows are numbered as in the whole file) and
    `headers` are the whole file's, so each stretch maps its cells exactly as one pass over the file would."""
    text = io.TextIOWrapper(io.BufferedReader(_Span(path, start, end), _BLOCK), encoding="utf-8", newline="")
    _, rows = _json_rows(text, "json", headers, before)
    return Rows(rows, text)


class _Closes(Protocol):
    def close(self) -> None: ...


class Rows:
    """The rows of an open input; iterate, then `close()` (or use `with`), even when stopping early."""

    def __init__(self, rows: Iterator[tuple[int, list[Any]]], text: _Closes) -> None:
        self._rows = rows
        self._text = text

    def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
        return self._rows  # the readers' own generators (errors already translated): no layer per row

    def close(self) -> None:
        self._text.close()

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _csv_rows(text: IO[str], delimiter: str, fmt: FormatConfig) -> tuple[list[str], Iterator[tuple[int, list[Any]]]]:
    reader = csv.reader(_lines(text), delimiter=delimiter)
    csv.field_size_limit(MAX_LINE)
    for _ in range(fmt.skip_rows):
        next(reader, None)
    if fmt.header:
        first = next(reader, None)
        headers = [h.strip() for h in first] if first else []
        if headers and headers[0].startswith("\ufeff"):
            headers[0] = headers[0][1:]
    else:
        first = None
        headers = []
    if len(headers) > MAX_COLUMNS:
        raise ReadError("too_many_columns", f"the header has {len(headers)} columns; at most {MAX_COLUMNS}")

    def rows() -> Iterator[tuple[int, list[Any]]]:
        # Rows are numbered by the line they start on, as a partner would find them in an editor.
        number = reader.line_num + 1
        with _read_errors():
            for row in reader:
                if len(row) > MAX_COLUMNS:
                    raise ReadError("too_many_columns",
                                    f"line {number} has {len(row)} columns; at most {MAX_COLUMNS}")
                if row:
                    yield number, row
                number = reader.line_num + 1

    if not fmt.header:
        # headerless: columns are named 1, 2, 3... from the first row
        first_line = reader.line_num + 1
        first_row = next(reader, None)
        if first_row is None:
            return [], iter(())
        headers = [str(i + 1) for i in range(len(first_row))]

        def with_first() -> Iterator[tuple[int, list[Any]]]:
            yield first_line, first_row
            yield from rows()  # headerless files only: one more layer here costs nothing that matters

        return headers, with_first()
    return headers, rows()


def json_objects(text: IO[str], kind: str, before: int = 0) -> Iterator[tuple[int, Any]]:
    if kind == "jsonl":
        for number, line in enumerate(_lines(text), 1):
            if line.strip():
                yield number, _decode(line, number)
        return
    decoder = json.JSONDecoder()
    buffer, pos, number = "", 0, before
    started = False
    exact_until = 0  # elements before this position go one at a time through the standard library
    while True:
        chunk = text.read(64 * 1024)
        buffer = buffer[pos:] + chunk
        pos, exact_until = 0, max(0, exact_until - pos)
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                pos += 1
            if not started and pos < len(buffer):
                if buffer[pos] != "[":
                    raise ReadError("unreadable_input", "a JSON file must hold an array of objects ([{...}, ...])")
                started, pos = True, pos + 1
                continue
            if pos < len(buffer) and buffer[pos] == "]":
                return
            if pos >= len(buffer):
                break  # need more text
            if pos >= exact_until:
                values, exact_until = _whole_elements(buffer, pos)
                if values is not None:
                    for value in values:
                        number += 1
                        yield number, value
                    pos = exact_until
                    continue
            try:
                value, end = _raw_decode(decoder, buffer, pos)
            except json.JSONDecodeError:
                if not chunk:
                    raise ReadError("unreadable_input", f"JSON could not be read after record {number}") from None
                if len(buffer) - pos > MAX_LINE:
                    raise ReadError("line_too_long",
                                    f"record {number + 1} is larger than {MAX_LINE} characters") from None
                break
            except RecursionError:
                raise ReadError("json_too_deep", f"record {number + 1} is nested too deeply") from None
            number += 1
            pos = end
            yield number, value
        if not chunk:
            if not started:
                raise ReadError("unreadable_input", "the JSON file is empty")
            raise ReadError("unreadable_input", "the JSON array is not closed with ']'")


def long_int(text: str) -> int | Decimal:
    """A JSON integer as an int, or, past the digits Python converts to an int (4,300 by default, a
    guard against quadratic conversion), as an exact Decimal: the row is then judged by its fields'
    rules (not an integer, too long...) like any other value, instead of failing the whole run."""
    return int(text) if len(text.lstrip("-")) <= _INT_DIGITS else Decimal(text)


_INT_DIGITS = sys.get_int_max_str_digits() or sys.maxsize
_LONG_NUMBERS = json.JSONDecoder(parse_int=long_int)


def _raw_decode(decoder: json.JSONDecoder, text: str, pos: int) -> tuple[Any, int]:
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer past the digit limit: decoded again, slowly, the rare time it happens
        return _LONG_NUMBERS.raw_decode(text, pos)


# Past 64 bits orjson gives a float: a window with a run of 19 digits goes the exact way. Digits are all
# made 9s and the run looked for with `in`: 15 times faster than a regex here.
_NINES = str.maketrans("012345678", "999999999")
_LONG_RUN = "9" * 19


def _whole_elements(buffer: str, pos: int) -> tuple[list[Any] | None, int]:
    """The complete elements of a JSON array from `buffer[pos]` on, parsed by orjson in one call (about
    three times faster than one `raw_decode` each), and where they end. The elements are None when that
    cannot be done exactly (a number orjson would round, or text it refuses such as NaN): the caller
    decodes up to the end one element at a time instead. The end is `pos` when no element is complete.

    The cut is the last `}` followed by `,` or `]`. A cut inside a string or a nested value leaves
    something unclosed, so orjson refuses it: whatever orjson accepts was cut between top-level elements."""
    end = buffer.rfind("}", pos)
    while end >= pos:
        after = end + 1
        while after < len(buffer) and buffer[after] in " \t\r\n":
            after += 1
        if after < len(buffer) and buffer[after] in ",]":
            break
        end = buffer.rfind("}", pos, end)
    if end < pos:
        return None, pos
    piece = buffer[pos:end + 1]
    if _LONG_RUN in piece.translate(_NINES):
        return None, end + 1
    try:
        return orjson.loads("[" + piece + "]"), end + 1
    except orjson.JSONDecodeError:
        return None, end + 1


def _decode(line: str, number: int) -> Any:
    try:
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise
        except ValueError:  # an integer past the digit limit (see `long_int`)
            return _LONG_NUMBERS.decode(line)
    except RecursionError:
        raise ReadError("json_too_deep", f"line {number} is nested too deeply") from None
    except ValueError as exc:
        return _Bad(f"line {number} is not valid JSON: {exc}")


class _Bad:
    """A JSONL line that is not JSON: a row error for that row, not the end of the run."""

    def __init__(self, message: str) -> None:
        self.message = message


def _json_rows(text: IO[str], kind: str, known: list[str] | None = None,
               before: int = 0) -> tuple[list[str], Iterator[tuple[int, list[Any]]]]:
    objects = json_objects(text, kind, before)
    buffered: list[tuple[int, Any]] = []
    headers: dict[str, None] = {}
    for number, obj in objects if known is None else ():  # headers from the first records (up to 100)
        buffered.append((number, obj))
        if isinstance(obj, dict):
            headers.update(dict.fromkeys(str(k) for k in obj))
        if len(buffered) >= 100:
            break
    names = list(headers) if known is None else known
    if len(names) > MAX_COLUMNS:
        raise ReadError("too_many_columns", f"records have {len(names)} keys; at most {MAX_COLUMNS}")

    def cells(obj: Any) -> list[Any]:
        if obj.__class__ is not dict:
            return [obj if isinstance(obj, _Bad) else _Bad("not a JSON object")]
        values = list(map(obj.get, names))
        if _NESTED.isdisjoint(map(type, values)):  # the usual flat record: no Python-level loop per value
            return values
        return [_flat(v) for v in values]

    def rows() -> Iterator[tuple[int, list[Any]]]:
        with _read_errors():
            for number, obj in buffered:
                yield number, cells(obj)
            for number, obj in objects:
                yield number, cells(obj)

    return names, rows()


_NESTED = frozenset({dict, list})


def _flat(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)  # str: a Decimal from `long_int`
    return value


def bad_row(cells: list[Any]) -> str | None:
    """The reason a row could not be read at all (a JSONL line that is not JSON), or None."""
    if len(cells) == 1 and isinstance(cells[0], _Bad):
        return cells[0].message
    return None
