"""Workbooks: one sheet of an .xlsx/.xlsm, .xls or .ods input -> headers and a stream of rows.

Sheets are read by calamine (python-calamine), which gives cells as typed values: formulas as their
cached results, dates as dates. Each cell is handed on as the text a CSV cell would hold, so every field
type reads it the same way whatever the format: a number cell 12.0 is "12" (an integer field takes it),
0.1 is "0.1" (to Excel's 15 significant digits, so no float artefact shows), a date cell is "2024-01-31", a
date-and-time cell "2024-01-31T09:30:00", a boolean "true"/"false", an empty cell "".

Rows are numbered as the spreadsheet shows them, whatever empty rows or junk lines come first.

calamine holds the whole sheet in memory (32 bytes a cell, plus the text of string cells) and aborts the
process, not raising anything, when a sheet's extent cannot be allocated: a 1 KiB xlsx with one cell in
A1 and one in XFD1048576 asks for 512 GiB. So before calamine opens a zipped workbook, every member is
unpacked once as a stream, with the ratio cap of any other archive and a cap of its own on the bytes
(calamine holds what it unpacks), and the cells' positions (xlsx) or repeat counts (ods) are added up: a
workbook whose sheets reach past `MAX_CELLS`, or that unpacks past the caps, is refused unread by
calamine, as is an .xlsb, whose binary records this does not read. An .xls (not a zip; at most
65,536 x 256 cells by its format) is refused past `MAX_XLS` bytes.
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import python_calamine

from feedd.config.units import suggest
from feedd.config.values import FormatConfig
from feedd.pipeline.read import MAX_COLUMNS, MAX_RATIO, Detected, ReadError, Rows, check_zip_directory

EXTENSIONS = (".xlsx", ".xlsm", ".xls", ".ods")  # picked by name under `type: auto`
MAX_UNPACKED = 1024**3  # bytes out of all of a zipped workbook's members together
MAX_CELLS = 20_000_000  # rows x columns of a sheet's extent: 640 MiB of calamine's cells
MAX_XLS = 256 * 1024**2  # bytes of an .xls file
MAX_ENTRIES = 4096  # members of a zipped workbook (one per sheet, plus a dozen parts)
MAX_DIRECTORY = 1024**2  # bytes of its central directory
_BLOCK = 1024**2  # bytes unpacked at a time while checking
MAX_MARKUP = 16 * 1024**2  # bytes from one '<' to the next
_CFB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an .xls (OLE compound file)


def is_workbook(name: str, wanted: str) -> bool:
    """Whether an input is read as a workbook: `type: xlsx`, or `auto` and a workbook's extension."""
    return wanted == "xlsx" or (wanted == "auto" and name.lower().endswith(EXTENSIONS))


def open_sheet(path: Path, fmt: FormatConfig) -> tuple[Detected, list[str], Rows]:
    """The headers and rows of the configured sheet. Rows are (row number as the sheet shows it, cells)."""
    kind = _check(path)
    try:
        book = python_calamine.CalamineWorkbook.from_path(str(path))
    except python_calamine.PasswordError:
        raise ReadError("unreadable_input", "the workbook is protected by a password") from None
    except (python_calamine.CalamineError, OSError, ValueError) as exc:
        raise ReadError("unreadable_input", f"the workbook could not be read: {_reason(exc)}") from None
    try:
        sheet = _sheet(book, fmt.sheet)
        detected = Detected(kind, "", None, None, sheet.name)
        headers, rows = _rows(sheet, fmt)
    except BaseException:
        book.close()
        raise
    return detected, headers, Rows(rows, book)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _sheet(book: python_calamine.CalamineWorkbook, wanted: str | int) -> python_calamine.CalamineSheet:
    names = list(book.sheet_names)
    shown = ", ".join(repr(n) for n in names) or "none"
    if isinstance(wanted, int):
        if wanted >= len(names):
            raise ReadError("sheet_not_found", f"the workbook has no sheet number {wanted} (counted from 0); "
                                               f"its sheets are {shown}")
        name = names[wanted]
    elif wanted not in names:
        raise ReadError("sheet_not_found", f"the workbook has no sheet {wanted!r}{suggest(wanted, names)}; "
                                           f"its sheets are {shown}")
    else:
        name = wanted
    try:
        return book.get_sheet_by_name(name)
    except python_calamine.CalamineError as exc:
        raise ReadError("unreadable_input", f"the sheet {name!r} could not be read: {_reason(exc)}") from None


def _rows(sheet: python_calamine.CalamineSheet, fmt: FormatConfig) -> tuple[list[str], Iterator[tuple[int, list[Any]]]]:
    if sheet.width > MAX_COLUMNS:
        raise ReadError("too_many_columns",
                        f"the sheet {sheet.name!r} has {sheet.width} columns; at most {MAX_COLUMNS}")
    # iter_rows gives the sheet's rows from its first row (those above the first cell come empty) and its
    # columns from the first one holding a cell: only the rows' numbers depend on where the data starts.
    # Rows are converted one at a time: no second copy of the sheet is made.
    source = enumerate(sheet.iter_rows(), 1)
    for _ in range(fmt.skip_rows):
        next(source, None)
    first = next(((n, row) for n, row in source if row.count("") != len(row)), None)  # the first holding anything
    if first is None:
        return [], iter(())
    first_number, first_row = first
    if fmt.header:
        headers = [_text(c).strip() for c in first_row]
        while headers and not headers[-1]:  # columns to the right of the header only hold notes
            headers.pop()
    else:
        headers = [str(i + 1) for i in range(len(first_row))]
    width = len(headers)

    def rows() -> Iterator[tuple[int, list[Any]]]:
        if not fmt.header:
            yield first_number, [c if c.__class__ is str else _text(c) for c in first_row]
        for number, row in source:
            if row.count("") != len(row):  # an empty cell is "": a row of them is a blank line, skipped as in CSV
                cells = [c if c.__class__ is str else _text(c) for c in row]
                yield number, cells if len(cells) <= width else cells[:width]

    return headers, rows()


def _text(value: Any) -> str:
    """A cell's typed value as the text a CSV cell would hold for it."""
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[no-any-return]
    if cls is float:
        if value.is_integer() and abs(value) < 1e16:  # within the integers a float holds exactly
            return str(int(value))
        # Excel's 15 significant digits: a formula's 0.1 + 0.2, cached as 0.30000000000000004, is 0.3 as
        # Excel shows it; what was typed (0.1, 19.99) reads back as typed
        return f"{value:.15g}" if math.isfinite(value) else ""
    if cls is bool:
        return "true" if value else "false"
    if cls is int:
        return str(value)
    if cls is datetime or cls is date or cls is time:
        return value.isoformat()  # type: ignore[no-any-return]
    if cls is timedelta:  # a duration cell, as Excel's [h]:mm:ss shows it
        seconds = value.total_seconds()
        sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
        whole = int(seconds)
        text = f"{sign}{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
        fraction = round(seconds - whole, 6)
        return text + (f"{fraction:.6f}".rstrip("0")[1:] if fraction else "")
    return str(value)


# Checks before calamine opens a file.

_FAST_COLUMN = re.compile(rb'<c r="([A-Z]+)')
_FAST_CELL_ROW = re.compile(rb'<c r="[A-Z]+(\d+)"')
_FAST_ROW = re.compile(rb'<row r="(\d+)"')
# Attributes as XML allows them: values in either quote, holding '>' or '=' (but never '<')
_ATTRIBUTES = rb"""(?:[^<>"']|"[^"]*"|'[^']*')*?"""
_R = rb"""\sr\s*=\s*["']"""
_XLSX_ROW = re.compile(rb"<(?:[\w.-]+:)?row(?=\s)" + _ATTRIBUTES + _R + rb"(\d+)")
_XLSX_CELL = re.compile(rb"<(?:[\w.-]+:)?c(?=\s)" + _ATTRIBUTES + _R + rb"([A-Za-z]+)(\d+)")
_XLSX_ROWS_ANY = re.compile(rb"<(?:[\w.-]+:)?row(?=[\s/>])")
_XLSX_CELLS_ANY = re.compile(rb"<(?:[\w.-]+:)?c(?=[\s/>])")
_PREFIXED = re.compile(rb"<[\w.-]+:(?:c|row)(?=[\s/>])")
# calamine reads ODS elements by their usual qualified names (`table:table-row`), as this does
_ODS_TAG = re.compile(rb"<(/?)table:(table-row|table-cell|covered-table-cell|table)(?=[\s/>])(" + _ATTRIBUTES
                      + rb")(/?)>")
_ODS_REPEAT = re.compile(rb"""number-(?:rows|columns)-repeated\s*=\s*["'](\d+)""")
_ODS_VALUE = re.compile(rb"office:value-type=")


def _check(path: Path) -> str:
    """Refuse a workbook calamine should not open (see the module's docstring); its kind: zip or xls."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == _CFB:
        if size > MAX_XLS:
            raise ReadError("unreadable_input", f"the .xls file is {size} bytes, more than {MAX_XLS}: refused unread")
        return "xls"
    if magic[:4] != b"PK\x03\x04":
        raise ReadError("unreadable_input", "this is not a workbook (an .xlsx, .xls or .ods file)")
    check_zip_directory(path, MAX_ENTRIES, MAX_DIRECTORY)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [i for i in archive.infolist() if not i.is_dir()]
            declared = sum(i.file_size for i in members)
            _bomb(declared, size)
            if any(i.filename.lower() == "xl/workbook.bin" for i in members):
                # calamine would read it, but its binary records are not checked here
                raise ReadError("unreadable_input", "an .xlsb (binary) workbook is not read: save it as .xlsx")
            ods = any(i.filename == "mimetype" for i in members)
            unpacked = 0
            for info in members:
                # Read as a stream, whatever the member's header claims: zipfile stops at the declared size
                # and checks the CRC, so a member that lies about its size fails here, not in calamine.
                with archive.open(info) as member:
                    # calamine picks the reader by the file's name, or else by what it holds: the sheets it
                    # may read are checked whatever the workbook says it is (ODS keeps them in content.xml)
                    extents = (_XlsxExtent(), _OdsExtent()) if info.filename == "content.xml" else (_XlsxExtent(),)
                    carry = b""
                    while block := member.read(_BLOCK):
                        unpacked += len(block)
                        _bomb(unpacked, size)
                        data = carry + block
                        # Up to the last '<' (which only ever opens markup): whole tags, whatever their
                        # attributes hold; the last one waits for the next block.
                        cut = data.rfind(b"<")
                        if cut < 0:
                            carry = b""  # no markup at all (text, or an image): nothing to carry
                            continue
                        for extent in extents:
                            extent.feed(data[:cut])
                        carry = data[cut:]
                        if len(carry) > MAX_MARKUP:
                            raise ReadError("unreadable_input", f"{info.filename} holds a tag of more than "
                                                                f"{MAX_MARKUP} bytes: refused unread")
                    for extent in extents:
                        extent.feed(carry)
                        extent.done(info.filename)
    except ReadError:
        raise
    except RuntimeError as exc:  # zipfile's word for an encrypted member
        raise ReadError("unreadable_input", f"the workbook could not be unpacked: {_reason(exc)}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, KeyError, ValueError) as exc:
        raise ReadError("unreadable_input", f"the workbook is damaged or cut short: {_reason(exc)}") from None
    return "ods" if ods else "xlsx"


def _bomb(unpacked: int, packed: int) -> None:
    if unpacked > MAX_UNPACKED or (unpacked > 10 * 1024**2 and unpacked > MAX_RATIO * max(packed, 1)):
        raise ReadError("unreadable_input", f"the workbook unpacks to more than {MAX_RATIO}x its size "
                                            f"or {MAX_UNPACKED} bytes: refused as a decompression bomb")


def _refuse(member: str, rows: int, columns: int) -> None:
    if rows * columns > MAX_CELLS:
        raise ReadError("unreadable_input", f"a sheet ({member}) reaches row {rows} and column {columns}: more "
                                            f"than {MAX_CELLS} cells, refused unread as a workbook bomb")


def _largest(numbers: list[bytes]) -> int:
    """The largest of row numbers as written (past 12 digits, a number no sheet reaches)."""
    distinct = set(numbers)
    return max((int(n) if len(n) <= 12 else 10**12 for n in distinct), default=0)


def _column(letters: bytes) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + ch - 64
    return n


class _XlsxExtent:
    """The furthest row and column a worksheet's cells reach. Cells and rows normally say where they are
    (`r="B7"`); those that do not are placed one after another, so their count is added as a bound.

    Excel, LibreOffice and openpyxl write `<c r="..."` and `<row r="..."`: a block where every cell and row
    tag has that form is read by literal-prefixed patterns (about 0.4 s for a million cells); any other
    block goes through patterns that allow any attribute order and namespace prefix (several times slower)."""

    def __init__(self) -> None:
        self.rows = 0
        self.unplaced_rows = self.unplaced_cells = 0
        self.letters: set[bytes] = set()

    def feed(self, data: bytes) -> None:
        letters = _FAST_COLUMN.findall(data)
        numbers = _FAST_ROW.findall(data)
        # Every `<c` that is not `<c r="` (`<col`, `<c>`, `<c\tr=`, `<cfRule`...) and every `<row` that is not
        # `<row r="` sends the block the long way, as does a prefixed tag (`<x:c`, which calamine reads too).
        if len(letters) != data.count(b"<c") - data.count(b"<col") or len(numbers) != data.count(b"<row") \
                or _PREFIXED.search(data):
            self._feed_any(data)
            return
        self.letters.update(set(letters))
        self.rows = max(self.rows, _largest(numbers), _largest(_FAST_CELL_ROW.findall(data)))

    def _feed_any(self, data: bytes) -> None:
        numbers = _XLSX_ROW.findall(data)
        self.rows = max(self.rows, _largest(numbers))
        cells = _XLSX_CELL.findall(data)
        if cells:
            self.letters.update(c for c, _ in cells)
            self.rows = max(self.rows, _largest([r for _, r in cells]))
        self.unplaced_rows += len(_XLSX_ROWS_ANY.findall(data)) - len(numbers)
        self.unplaced_cells += len(_XLSX_CELLS_ANY.findall(data)) - len(cells)

    def done(self, member: str) -> None:
        columns = max(map(_column, self.letters), default=0) + self.unplaced_cells
        _refuse(member, self.rows + self.unplaced_rows, columns)


def _repeat(attributes: bytes) -> int:
    found = _ODS_REPEAT.search(attributes)
    return 1 if found is None else int(found[1]) if len(found[1]) <= 12 else 10**12


class _OdsExtent:
    """The furthest row and column an ODS table's cells reach, repeats counted (`number-rows-repeated`,
    `number-columns-repeated`). Repeated empty rows and cells past the last value are not counted:
    LibreOffice writes them to the sheet's edge, and calamine does not expand them either."""

    def __init__(self) -> None:
        self.rows = self.columns = 0
        self.row = self.row_columns = 0  # rows so far in this table; columns so far in this row
        self.row_repeat = 1
        self.row_valued = False

    def feed(self, data: bytes) -> None:
        for closing, tag, attributes, empty in _ODS_TAG.findall(data):
            if tag == b"table":
                self.row = 0
            elif tag == b"table-row":
                if closing:
                    self._end_row()
                else:
                    self.row_repeat, self.row_columns, self.row_valued = _repeat(attributes), 0, False
                    if empty:
                        self._end_row()
            elif not closing:
                self.row_columns += _repeat(attributes)
                if not empty or _ODS_VALUE.search(attributes):  # a cell with a value or text
                    self.row_valued = True
                    self.columns = max(self.columns, self.row_columns)

    def _end_row(self) -> None:
        self.row += self.row_repeat
        if self.row_valued:
            self.rows = max(self.rows, self.row)
            if self.rows * self.columns > MAX_CELLS:
                _refuse("content.xml", self.rows, self.columns)

    def done(self, member: str) -> None:
        _refuse(member, self.rows, self.columns)
