"""Excel and OpenDocument inputs, end to end through a real daemon: a workbook dropped over SFTP becomes
typed records, errors name the row the spreadsheet shows, and workbooks that would exhaust memory are refused."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlwt

import tests.sftp.conftest as sftp_conftest
from feedd.config import load_config
from feedd.config.values import FormatConfig
from feedd.errors import ConfigError
from feedd.model import Run, RunStatus
from feedd.pipeline import workbook
from feedd.pipeline.read import ReadError, open_rows
from tests.helpers import MINIMAL, write
from tests.pipeline.test_runner import finished, upload
from tests.sftp.conftest import Feedd

SCHEMA = """schemas:
  contact:
    fields:
      name: {type: string, required: true}
      born: {type: date}
      n: {type: integer}
      score: {type: number}
      ok: {type: boolean}
      seen: {type: datetime}
      code: {type: string}
"""
FIELDS = ("name", "born", "n", "score", "ok", "seen", "code")


@pytest.fixture
def start(start_feedd: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """A daemon whose demo pipeline reads any file in inbox/ into the schema above, delivering to out/."""
    config = sftp_conftest.CONFIG.replace(
        "schemas:\n  contact:\n    fields:\n      email: {type: email, required: true}\n", SCHEMA)
    config = config.replace('match: ["inbox/*.csv", "inbox/**/*.csv"]', 'match: ["inbox/*"]')
    assert SCHEMA in config and 'match: ["inbox/*"]' in config
    monkeypatch.setattr(sftp_conftest, "CONFIG", config)

    async def start_with(fmt: str = "") -> Feedd:
        extra = (f"format: {fmt}\n    " if fmt else "") + \
            f'destinations: [{{type: directory, path: "{tmp_path / "out"}"}}]'
        return await start_feedd(workers=1, pipeline_extra=extra)  # type: ignore[no-any-return]

    return start_with


def records(tmp_path: Path, run: Run) -> list[dict[str, Any]]:
    [delivered] = [p for p in (tmp_path / "out").iterdir() if run.run_id in p.name]
    return [json.loads(line) for line in delivered.read_text().splitlines()]


def people_xlsx(*, junk: int = 4) -> bytes:
    """A workbook whose first sheet is notes and whose second, People, has `junk` lines above its header."""
    book = openpyxl.Workbook()
    notes = book.active
    notes.title = "Notes"
    notes["A1"] = "nothing to read here"
    sheet = book.create_sheet("People")
    for i in range(1, junk + 1):
        sheet.cell(i, 2, f"exported by the HR system, line {i}")
    sheet.append(list(FIELDS))
    sheet.append(["ann", date(2020, 1, 2), 12.0, 0.1, True, datetime(2020, 1, 2, 3, 4, 5), 7])
    sheet.append(["bob", date(1999, 12, 31), 12, 2.5, False, None, "A-7"])
    sheet.append(["cy", "not a date", 1.5, 3, True, None, None])  # the 3rd data row: row junk + 4
    return _saved(book)


def _saved(book: openpyxl.Workbook) -> bytes:
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


async def test_typed_cells_become_typed_records_and_errors_name_the_sheets_row(
        start: Callable[..., Any], tmp_path: Path) -> None:
    feedd: Feedd = await start('{type: xlsx, sheet: "People", skip_rows: 4}')
    await upload(feedd, "/inbox/people.xlsx", people_xlsx(junk=4))
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED, run.error
    assert (run.counts.rows, run.counts.valid, run.counts.invalid) == (3, 2, 1)
    assert records(tmp_path, run) == [
        {"name": "ann", "born": "2020-01-02", "n": 12, "score": 0.1, "ok": True, "seen": "2020-01-02T03:04:05",
         "code": "7"},
        {"name": "bob", "born": "1999-12-31", "n": 12, "score": 2.5, "ok": False, "seen": None, "code": "A-7"},
    ]
    # header on row 5 (after 4 junk lines), the 3rd data row is row 8, as the spreadsheet shows it
    assert {(e.row, e.field, e.message) for e in run.errors} == {
        (8, "born", "born: 'not a date' is not a date (YYYY-MM-DD)"),
        (8, "n", "n: '1.5' is not an integer"),
    }
    assert run.meta["detected"]["format"] == "xlsx" and run.meta["detected"]["sheet"] == "People"


async def test_rows_keep_the_sheets_numbers_whatever_lies_above_the_header(start: Callable[..., Any]) -> None:
    """calamine starts a sheet's data at its first cell: rows above it, and skipped ones, still count."""
    feedd: Feedd = await start("{type: xlsx, sheet: 1}")  # by position; no skip_rows: empty rows are passed over
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    sheet = book.create_sheet("People")
    sheet["C3"] = "name"  # the table starts at C3: rows 1-2 and columns A-B are empty
    sheet["D3"] = "n"
    sheet["C4"] = "ann"
    sheet["D4"] = 1
    sheet["C6"] = "bob"  # row 5 is blank
    sheet["D6"] = "x"
    await upload(feedd, "/inbox/shifted.xlsx", _saved(book))
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert (run.counts.rows, run.counts.valid) == (2, 1)
    assert [(e.row, e.field) for e in run.errors] == [(6, "n")]


async def test_an_unknown_sheet_fails_naming_the_sheets_there_are(start: Callable[..., Any]) -> None:
    feedd: Feedd = await start('{type: xlsx, sheet: "Peple"}')
    await upload(feedd, "/inbox/people.xlsx", people_xlsx())
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.code == "sheet_not_found"
    assert run.error.message == ("inbox/people.xlsx: the workbook has no sheet 'Peple' (did you mean 'People'?); "
                                 "its sheets are 'Notes', 'People'")


async def test_a_sheet_position_past_the_last_fails_the_same_way(start: Callable[..., Any]) -> None:
    feedd: Feedd = await start("{type: xlsx, sheet: 5}")
    await upload(feedd, "/inbox/people.xlsx", people_xlsx())
    [run] = await finished(feedd, 1)
    assert run.error is not None and run.error.code == "sheet_not_found"
    assert "no sheet number 5 (counted from 0); its sheets are 'Notes', 'People'" in run.error.message


def minimal_xlsx(sheet_data: str, *, extra: dict[str, bytes] | None = None) -> bytes:
    """An .xlsx written by hand: one sheet whose <sheetData> is `sheet_data` (openpyxl cannot store a
    formula's cached value, which is what Excel leaves in the file and calamine reads)."""
    ns = "http://schemas.openxmlformats.org/"
    parts = {
        "[Content_Types].xml": f'<?xml version="1.0"?><Types xmlns="{ns}package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.'
        'spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>',
        "_rels/.rels": f'<?xml version="1.0"?><Relationships xmlns="{ns}package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{ns}officeDocument/2006/relationships/officeDocument" '
        'Target="xl/workbook.xml"/></Relationships>',
        "xl/workbook.xml": f'<?xml version="1.0"?><workbook xmlns="{ns}spreadsheetml/2006/main" '
        f'xmlns:r="{ns}officeDocument/2006/relationships"><sheets><sheet name="Data" sheetId="1" r:id="rId1"/>'
        '</sheets></workbook>',
        "xl/_rels/workbook.xml.rels": f'<?xml version="1.0"?><Relationships xmlns="{ns}package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{ns}officeDocument/2006/relationships/worksheet" '
        'Target="worksheets/sheet1.xml"/></Relationships>',
        "xl/worksheets/sheet1.xml": f'<?xml version="1.0"?><worksheet xmlns="{ns}spreadsheetml/2006/main">'
        f"<sheetData>{sheet_data}</sheetData></worksheet>",
    }
    return _zip({k: v.encode() for k, v in parts.items()} | (extra or {}))


def _zip(members: dict[str, bytes], stored: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data, zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _inline(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


async def test_a_formulas_cached_value_is_what_is_read(start: Callable[..., Any], tmp_path: Path) -> None:
    feedd: Feedd = await start()  # type: auto, picked by the extension
    data = minimal_xlsx(
        f'<row r="1">{_inline("A1", "name")}{_inline("B1", "n")}{_inline("C1", "score")}</row>'
        f'<row r="2">{_inline("A2", "ann")}<c r="B2"><f>40+2</f><v>42</v></c>'
        '<c r="C2"><f>0.1+0.2</f><v>0.30000000000000004</v></c></row>')  # as Excel caches it
    await upload(feedd, "/inbox/sums.xlsx", data)
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED, run.error
    assert [(r["n"], r["score"]) for r in records(tmp_path, run)] == [(42, 0.3)]  # as Excel shows it


def minimal_ods(rows: str, *, table: str = "People") -> bytes:
    """An OpenDocument spreadsheet written by hand: the parts calamine reads (openpyxl writes no .ods)."""
    content = ('<?xml version="1.0" encoding="UTF-8"?><office:document-content '
               'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
               'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
               'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
               f'<office:body><office:spreadsheet><table:table table:name="{table}">{rows}</table:table>'
               '</office:spreadsheet></office:body></office:document-content>')
    manifest = ('<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
                'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
                '<manifest:file-entry manifest:full-path="/" '
                'manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
                '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
                '</manifest:manifest>')
    return _zip({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet",
                 "META-INF/manifest.xml": manifest.encode(), "content.xml": content.encode()}, stored=("mimetype",))


def _ods_cell(value: str, kind: str = "string") -> str:
    attribute = {"string": "", "float": f' office:value="{value}"', "date": f' office:date-value="{value}"',
                 "boolean": f' office:boolean-value="{value}"'}[kind]
    return (f'<table:table-cell office:value-type="{kind}"{attribute}><text:p>{value}</text:p>'
            "</table:table-cell>")


def _ods_row(*cells: str, repeat: int = 1) -> str:
    more = f' table:number-rows-repeated="{repeat}"' if repeat > 1 else ""
    return f"<table:table-row{more}>{''.join(cells)}</table:table-row>"


async def test_an_ods_is_read_like_an_xlsx(start: Callable[..., Any], tmp_path: Path) -> None:
    feedd: Feedd = await start()  # type: auto, picked by the extension
    rows = (_ods_row(*(_ods_cell(h) for h in ("name", "born", "n", "ok")))
            + _ods_row(_ods_cell("ann"), _ods_cell("2020-01-02", "date"), _ods_cell("12", "float"),
                       _ods_cell("true", "boolean"))
            # what LibreOffice writes below the data: empty rows to the sheet's edge
            + '<table:table-row table:number-rows-repeated="1048574"><table:table-cell '
              'table:number-columns-repeated="16384"/></table:table-row>')
    await upload(feedd, "/inbox/people.ods", minimal_ods(rows))
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED, run.error
    assert records(tmp_path, run) == [
        {"name": "ann", "born": "2020-01-02", "n": 12, "score": None, "ok": True, "seen": None, "code": None}]


def people_xls() -> bytes:
    """An Excel 97-2003 workbook (BIFF8, the format of .xls), as older HR and ERP exports still write it."""
    book = xlwt.Workbook()
    book.add_sheet("Notes").write(0, 0, "nothing to read here")
    sheet = book.add_sheet("People")
    sheet.write(0, 1, "exported by the payroll system")
    day, moment = xlwt.easyxf(num_format_str="YYYY-MM-DD"), xlwt.easyxf(num_format_str="YYYY-MM-DD HH:MM:SS")
    for column, name in enumerate(("name", "born", "n", "score", "ok", "seen")):
        sheet.write(2, column, name)
    for column, value in enumerate(("ann", date(2020, 1, 2), 12.0, 0.1, True, datetime(2020, 1, 2, 3, 4, 5))):
        sheet.write(3, column, value, day if column == 1 else moment if column == 5 else xlwt.Style.default_style)
    sheet.write(4, 0, "bob")
    sheet.write(4, 2, 1.5)  # row 5 as Excel shows it
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


async def test_an_xls_is_read_like_an_xlsx(start: Callable[..., Any], tmp_path: Path) -> None:
    feedd: Feedd = await start('{type: auto, sheet: "People", skip_rows: 2}')
    await upload(feedd, "/inbox/payroll.xls", people_xls())
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED, run.error
    assert records(tmp_path, run) == [
        {"name": "ann", "born": "2020-01-02", "n": 12, "score": 0.1, "ok": True, "seen": "2020-01-02T03:04:05",
         "code": None}]
    assert [(e.row, e.field, e.message) for e in run.errors] == [(5, "n", "n: '1.5' is not an integer")]
    assert run.meta["detected"]["sheet"] == "People"


async def test_a_workbook_bomb_is_refused_before_it_is_read(start: Callable[..., Any]) -> None:
    feedd: Feedd = await start()
    # 1 KiB that calamine would make into a sheet of 17 billion cells (and abort the worker asking for them)
    far = minimal_xlsx(f'<row r="1">{_inline("A1", "name")}</row><row r="1048576"><c r="XFD1048576"><v>1</v></c></row>')
    # a member that unpacks to 1,000 times its size
    zeros = minimal_xlsx(f'<row r="1">{_inline("A1", "name")}</row>', extra={"xl/media/zeros.bin": bytes(12 * 2**20)})
    await upload(feedd, "/inbox/far.xlsx", far)
    await upload(feedd, "/inbox/zeros.xlsx", zeros)
    runs = await finished(feedd, 2)
    errors = {r.source.name: r.error for r in runs}
    assert all(r.status is RunStatus.FAILED for r in runs)
    far_error, zeros_error = errors["inbox/far.xlsx"], errors["inbox/zeros.xlsx"]
    assert far_error is not None and zeros_error is not None
    assert far_error.code == zeros_error.code == "unreadable_input"
    assert far_error.message == ("inbox/far.xlsx: a sheet (xl/worksheets/sheet1.xml) reaches row 1048576 and "
                                 "column 16384: more than 20000000 cells, refused unread as a workbook bomb")
    assert zeros_error.message.endswith("refused as a decompression bomb")


async def test_a_corrupt_workbook_fails_clearly_and_keeps_its_input(start: Callable[..., Any]) -> None:
    feedd: Feedd = await start()
    whole = people_xlsx()
    await upload(feedd, "/inbox/cut.xlsx", whole[: len(whole) // 2])
    await upload(feedd, "/inbox/text.xlsx", b"name,n\nann,1\n")
    runs = await finished(feedd, 2)
    errors = {r.source.name: r.error for r in runs}
    assert all(r.status is RunStatus.FAILED for r in runs)
    cut, text = errors["inbox/cut.xlsx"], errors["inbox/text.xlsx"]
    assert cut is not None and text is not None
    assert cut.code == text.code == "unreadable_input"
    assert cut.message.startswith("inbox/cut.xlsx: the workbook ")
    assert text.message == "inbox/text.xlsx: this is not a workbook (an .xlsx, .xls or .ods file)"
    spooled = {r.source.name: Path(r.spool_path).read_bytes() for r in runs}
    assert spooled["inbox/cut.xlsx"] == whole[: len(whole) // 2]  # the input stays, as sent, for a retry


# The reader on its own: the cases that need no daemon.


def test_cells_as_text() -> None:
    from datetime import time, timedelta

    assert [workbook._text(v) for v in (12.0, 0.1, 0.1 + 0.2, 19.99, 1 / 3, -3.0, 1.5e-7, 1e20, 7, True, False,
                                        "", "x")] == \
        ["12", "0.1", "0.3", "19.99", "0.333333333333333", "-3", "1.5e-07", "1e+20", "7", "true", "false", "", "x"]
    assert workbook._text(date(2024, 1, 31)) == "2024-01-31"
    assert workbook._text(datetime(2024, 1, 31, 9, 30)) == "2024-01-31T09:30:00"
    assert workbook._text(time(9, 30)) == "09:30:00"
    assert workbook._text(timedelta(hours=26, minutes=5, seconds=1.5)) == "26:05:01.5"


def test_headerless_sheets_and_zero_cells(tmp_path: Path) -> None:
    path = tmp_path / "plain.xlsx"
    book = openpyxl.Workbook()
    book.active.append([0, 0.0, False])  # zeros are values, not blanks
    book.active.append(["a", "b", "c"])
    book.save(path)
    _, headers, rows = open_rows(path, FormatConfig(header=False))
    with rows:
        assert (headers, list(rows)) == (["1", "2", "3"], [(1, ["0", "0", "false"]), (2, ["a", "b", "c"])])


def test_an_ods_repeating_a_value_to_a_huge_extent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "repeat.ods"
    path.write_bytes(minimal_ods(_ods_row(_ods_cell("name")) + _ods_row(
        '<table:table-cell table:number-columns-repeated="1000" office:value-type="float" office:value="1"/>',
        repeat=100_000)))
    with pytest.raises(ReadError, match="reaches row 100001 and column 1000: more than 20000000 cells") as info:
        open_rows(path, FormatConfig())
    assert info.value.code == "unreadable_input"


def test_cells_that_do_not_say_where_they_are_still_count(tmp_path: Path) -> None:
    """Cells and rows without `r`, or with attributes in another order, go through the slower patterns."""
    path = tmp_path / "odd.xlsx"
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    for far in ('<row spans="1:1" r="1048576"><c s="0" r="XFD1048576"><v>1</v></c></row>',
                '<row r="1048576"><c s="a>b" r="XFD1048576"><v>1</v></c></row>',  # '>' in a value is XML
                "<row r='1048576'><c\tr = 'XFD1048576'><v>1</v></c></row>",
                f'<x:row xmlns:x="{main}" r="1048576"><x:c r="XFD1048576"><x:v>1</x:v></x:c></x:row>'):
        path.write_bytes(minimal_xlsx(f'<row r="1">{_inline("A1", "name")}</row>{far}'))
        with pytest.raises(ReadError, match="reaches row 1048576 and column 16384"):
            open_rows(path, FormatConfig())
    path.write_bytes(minimal_xlsx(f'<row r="1">{_inline("A1", "name")}{_inline("B1", "n")}</row>'
                                  '<row><c><v>1</v></c><c><v>2</v></c><c><v>3</v></c></row>'))
    _, headers, rows = open_rows(path, FormatConfig())
    with rows:  # a cell right of the header's last name is a note beside the table, not a column
        assert (headers, list(rows)) == (["name", "n"], [(2, ["1", "2"])])


def test_an_xls_past_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.xls"
    with open(path, "wb") as f:
        f.write(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
        f.truncate(workbook.MAX_XLS + 1)  # sparse: nothing is written past the header
    with pytest.raises(ReadError, match=r"the \.xls file is \d+ bytes, more than \d+: refused unread"):
        open_rows(path, FormatConfig())


def test_workbooks_are_picked_by_extension_under_auto_only() -> None:
    assert all(workbook.is_workbook(f"a{ext}", "auto") for ext in (".xlsx", ".XLSX", ".xlsm", ".xls", ".ods"))
    assert workbook.is_workbook("a.csv", "xlsx")
    assert not workbook.is_workbook("a.xlsx", "csv") and not workbook.is_workbook("a.csv", "auto")


@pytest.mark.parametrize(("written", "message"), [
    ("{type: xlsx, sheet: -1}", "format.sheet: expected a sheet name or a position counted from 0, got -1"),
    ("{type: xlsx, sheet: [a]}", "format.sheet: expected a sheet name or a position counted from 0, got a list"),
    ("{type: csv, sheet: People}", "format.sheet: 'sheet' is read only from workbooks (type: xlsx or auto), not csv"),
    ("{type: xslx}", "format.type: expected one of csv, tsv, json, jsonl, xlsx, auto, got 'xslx'"),
])
def test_format_keys_are_checked_at_load(tmp_path: Path, written: str, message: str) -> None:
    config = MINIMAL.replace('match: ["inbox/*.csv"]', f'match: ["inbox/*"]\n    format: {written}')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "feedd.yaml", config), env={})
    assert any(message in str(i) for i in info.value.issues), [str(i) for i in info.value.issues]


def test_a_sheet_is_a_name_or_a_position(tmp_path: Path) -> None:
    for written, expected in (('{type: xlsx, sheet: "2024"}', "2024"), ("{type: xlsx, sheet: 2}", 2),
                              ("xlsx", 0)):
        text = MINIMAL.replace('match: ["inbox/*.csv"]', f'match: ["inbox/*"]\n    format: {written}')
        loaded = load_config(write(tmp_path, "feedd.yaml", text), env={})
        fmt = loaded.pipelines["demo-contacts"].format
        assert (fmt.type, fmt.sheet) == ("xlsx", expected)


def test_the_checks_follow_what_calamine_would_read_not_the_name(tmp_path: Path) -> None:
    """calamine picks its reader by the name, or else by the content: an ODS sent without an extension is
    checked as an ODS, a binary .xlsb (whose records are not checked) is refused, and macros are no sheet."""
    bomb = tmp_path / "export"
    bomb.write_bytes(minimal_ods(_ods_row(_ods_cell("name")) + _ods_row(
        '<table:table-cell table:number-columns-repeated="1000" office:value-type="float" office:value="1"/>',
        repeat=100_000)))
    with pytest.raises(ReadError, match="more than 20000000 cells"):
        open_rows(bomb, FormatConfig(type="xlsx"))
    binary = tmp_path / "book.xlsb"
    binary.write_bytes(_zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.bin": b"\x83\x01\x00"}))
    with pytest.raises(ReadError, match=r"an \.xlsb \(binary\) workbook is not read"):
        open_rows(binary, FormatConfig(type="xlsx"))
    macros = tmp_path / "book.xlsm"
    macros.write_bytes(minimal_xlsx(f'<row r="1">{_inline("A1", "name")}</row><row r="2">{_inline("A2", "ann")}</row>',
                                    extra={"xl/vbaProject.bin": bytes(range(256)) * 64}))
    _, headers, rows = open_rows(macros, FormatConfig())
    with rows:
        assert (headers, list(rows)) == (["name"], [(2, ["ann"])])


def test_the_data_spec_tells_partners_to_send_a_workbook(tmp_path: Path) -> None:
    from feedd.spec import render

    for written, words in (('{type: xlsx, sheet: "People"}', "with the rows in the sheet named 'People'"),
                           ("xlsx", "with the rows in the first sheet"), ("csv", "(CSV with a header row, or JSON)")):
        text = MINIMAL.replace('match: ["inbox/*.csv"]', f'match: ["inbox/*"]\n    format: {written}')
        config = load_config(write(tmp_path, "feedd.yaml", text), env={})
        _, markdown = render(config.pipelines["demo-contacts"], config.schemas["contact"])
        assert words in markdown.splitlines()[2], markdown.splitlines()[2]


def test_a_workbook_with_encrypted_members_is_unreadable_input(tmp_path: Path) -> None:
    data = bytearray(minimal_xlsx(f'<row r="1">{_inline("A1", "name")}</row>'))
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set each header's "encrypted" bit
        at = data.find(signature)
        while at >= 0:
            data[at + flags] |= 1
            at = data.find(signature, at + 4)
    path = tmp_path / "locked.xlsx"
    path.write_bytes(bytes(data))
    with pytest.raises(ReadError, match=r"the workbook could not be unpacked: .* is encrypted") as info:
        open_rows(path, FormatConfig())
    assert info.value.code == "unreadable_input"
