"""Readers on real files: detection, encodings, streaming JSON, archives, and limits on hostile input."""

from __future__ import annotations

import gzip
import json
import math
import resource
import zipfile
from pathlib import Path
from typing import Any

import pytest

from feedd.config.values import FormatConfig
from feedd.pipeline import read
from feedd.pipeline.read import ReadError, bad_row, open_rows

AUTO = FormatConfig()


def rows_of(path: Path, fmt: FormatConfig = AUTO) -> tuple[read.Detected, list[str], list[tuple[int, list]]]:
    detected, headers, rows = open_rows(path, fmt)
    with rows:
        return detected, headers, list(rows)


@pytest.mark.parametrize(("delimiter", "name"), [(",", "comma"), (";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_csv_delimiters_are_detected(tmp_path: Path, delimiter: str, name: str) -> None:
    path = tmp_path / f"{name}.csv"
    path.write_text(delimiter.join(["id", "email", "note"]) + "\n" + delimiter.join(["1", "a@b.c", "x y"]) + "\n")
    detected, headers, rows = rows_of(path)
    assert detected.delimiter == delimiter and headers == ["id", "email", "note"]
    assert rows == [(2, ["1", "a@b.c", "x y"])]


@pytest.mark.parametrize(("encoding", "raw_prefix", "expected"), [
    ("utf-8", b"", "utf-8"),
    ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"),
    ("utf-16", b"", "utf-16"),
    ("cp1252", b"", "cp1252"),
])
def test_encodings_are_detected(tmp_path: Path, encoding: str, raw_prefix: bytes, expected: str) -> None:
    path = tmp_path / "names.csv"
    path.write_bytes(raw_prefix + "name,city\nJosé Müller,Zürich €\n".encode(encoding))
    detected, headers, rows = rows_of(path)
    assert detected.encoding == expected
    assert headers == ["name", "city"] and rows == [(2, ["José Müller", "Zürich €"])]


def test_quoting_multiline_fields_skip_rows_and_tsv(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('exported by X\nid,text\n1,"line one\nline two, with comma"\n2,"say ""hi"""\n')
    _, headers, rows = rows_of(path, FormatConfig(skip_rows=1))
    assert headers == ["id", "text"]
    assert rows == [(3, ["1", "line one\nline two, with comma"]), (5, ["2", 'say "hi"'])]
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\tb\n1\t2\n")
    detected, headers, rows = rows_of(tsv)
    assert (detected.format, headers, rows) == ("tsv", ["a", "b"], [(2, ["1", "2"])])


def test_headerless_csv_names_columns_by_position(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("1,a@b.c\n2,d@e.f\n")
    _, headers, rows = rows_of(path, FormatConfig(header=False))
    assert headers == ["1", "2"] and [r[0] for r in rows] == [1, 2]


def test_json_array_is_streamed_and_jsonl_keeps_going_past_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"id": i, "tags": ["x"], "email": f"u{i}@x.io"} for i in range(3)]))
    detected, headers, rows = rows_of(path)
    assert detected.format == "json" and headers == ["id", "tags", "email"]
    assert rows[2] == (3, [2, '["x"]', "u2@x.io"])
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"id": 1}\nnot json\n\n{"id": 3}\n')
    _, headers, rows = rows_of(lines)
    assert headers == ["id"] and [n for n, _ in rows] == [1, 2, 4]
    assert bad_row(rows[1][1]) is not None and "line 2 is not valid JSON" in str(bad_row(rows[1][1]))


def test_gzip_and_single_member_zip(tmp_path: Path) -> None:
    gz = tmp_path / "people.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write("id,email\n1,a@b.c\n")
    detected, headers, rows = rows_of(gz)
    assert (detected.compression, detected.format, rows) == ("gzip", "csv", [(2, ["1", "a@b.c"])])
    zp = tmp_path / "people.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("../../etc/evil.jsonl", '{"id": 1}\n')  # the member's name is never used as a path
    detected, headers, rows = rows_of(zp)
    assert (detected.compression, detected.format, headers) == ("zip", "jsonl", ["id"])
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("a.csv", "x\n")
        z.writestr("b.csv", "y\n")
    with pytest.raises(ReadError, match="exactly one file"):
        rows_of(two)


def test_gzip_bomb_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.csv.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(b"a,b\n")
        chunk = b"0,0\n" * (256 * 1024)
        for _ in range(64):
            f.write(chunk)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ReadError, match="decompression bomb"):
        rows_of(bomb)


def test_a_huge_line_fails_naming_the_line_without_buffering_it(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    with open(path, "w") as f:
        f.write("id,text\n1,short\n2,")
        for _ in range(200):
            f.write("x" * (1024 * 1024))
        f.write("\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ReadError) as info:
        rows_of(path)
    assert info.value.code == "line_too_long" and "line 3" in info.value.message
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"reading grew RSS by {grown_mib:.0f} MiB"


def test_binary_garbage_is_unreadable_input(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(bytes(range(256)) * 100)
    with pytest.raises(ReadError) as info:
        rows_of(path)
    assert info.value.code == "unreadable_input"


def test_deep_json_and_unclosed_arrays(tmp_path: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ReadError) as info:
        rows_of(deep)
    assert info.value.code == "json_too_deep"
    unclosed = tmp_path / "u.json"
    unclosed.write_text('[{"a": 1}, {"a": 2}')
    with pytest.raises(ReadError, match="not closed"):
        rows_of(unclosed)


def test_line_numbers_and_line_ends_hold_across_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny blocks put a block boundary inside lines, quoted fields and between \r and \n.
    monkeypatch.setattr(read, "_BLOCK", 7)
    path = tmp_path / "ends.csv"
    path.write_bytes(b'id,text\r\n1,"two\r\nlines"\r\n2,plain\r3,cr only\n\n4,"x\ty"\n')
    _, headers, rows = rows_of(path)
    assert headers == ["id", "text"]
    assert rows == [(2, ["1", "two\r\nlines"]), (4, ["2", "plain"]), (5, ["3", "cr only"]), (7, ["4", "x\ty"])]


def test_a_long_line_inside_a_block_names_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read, "MAX_LINE", 50)
    path = tmp_path / "long.csv"
    path.write_text("id,text\n1,a\n2,b\n3," + "x" * 60 + "\n4,d\n")
    with pytest.raises(ReadError) as info:
        rows_of(path)
    assert info.value.code == "line_too_long" and "line 4 is longer than 50" in info.value.message


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9])
def test_a_truncated_gzip_is_unreadable_input_not_a_traceback(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "cut.csv.gz"
    whole = gzip.compress(b"id,name\n" + b"".join(b"%d,name %d\n" % (i, i * 7919) for i in range(2000)))
    path.write_bytes(whole[:int(len(whole) * keep)])
    with pytest.raises(ReadError) as info:
        rows_of(path)
    assert info.value.code == "unreadable_input"


@pytest.mark.parametrize("indent", [None, 1])
def test_json_arrays_read_in_batches_agree_with_the_stdlib(tmp_path: Path, indent: int | None) -> None:
    # strings with braces and commas, nested objects, huge integers, non-objects: across many read chunks;
    # and what orjson would read differently or refuse: NaN, infinity, lone surrogates, 19-digit runs
    records: list[Any] = []
    for i in range(6000):
        records.append({"id": i, "text": "}, {\"fake\": 1} ]" * (i % 3), "nested": {"a": [1, {"b": "}"}]},
                        "big": 2**70 + i if i % 500 == 0 else -(2**64) - i if i % 700 == 0 else i})
        if i % 1000 == 0:
            records.append(["not", "an", "object"])
        if i % 900 == 0:
            records.append({"id": i, "text": "\ud800 lone", "nested": float("nan"), "big": float("inf")})
        if i % 800 == 0:
            records.append({"id": i, "text": "1234567890123456789012", "nested": None, "big": 9223372036854775807})
    path = tmp_path / "tricky.json"
    path.write_text(json.dumps(records, indent=indent), encoding="utf-8", errors="surrogatepass")
    _, headers, rows = rows_of(path)
    assert headers == ["id", "text", "nested", "big"]
    assert len(rows) == len(records)
    objects = [r for r in records if isinstance(r, dict)]
    got = [cells for _, cells in rows if not bad_row(cells)]
    assert [c[0] for c in got] == [r["id"] for r in objects]
    assert [c[3] for c in got] == [r["big"] for r in objects]
    assert all(type(c[3]) is type(r["big"]) for c, r in zip(got, objects, strict=True))  # ints stay exact ints
    assert [c[1] for c in got] == [r["text"] for r in objects]
    assert [math.isnan(c[2]) for c in got if isinstance(c[2], float)] == [True] * 7
    assert sum(1 for _, cells in rows if bad_row(cells)) == 6


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_detection_is_linear_on_sniffer_killers(tmp_path: Path, delimiter: str) -> None:
    # `delimiter"a` repeated: every quote opens a match attempt that csv.Sniffer's regexes carry to the end
    # of the sample (quadratic: seconds for a few KiB). The detector counts, and gives the right answer.
    crafted = f'{delimiter}"a' * 2000
    assert read.detect_delimiter(crafted) == delimiter
    line = f'{delimiter}"a' * (1024 * 1024 // 3)  # a 1 MiB line, past anything a sample holds
    assert read.detect_delimiter(line + "\n") == delimiter
    path = tmp_path / "crafted.csv.gz"
    path.write_bytes(gzip.compress(("id" + crafted + "\n").encode()))
    detected, headers, _ = rows_of(path)
    assert detected.delimiter == delimiter and headers


@pytest.mark.parametrize(("sample", "expected"), [
    ("email\nann@example.org\n", ","),  # one column: nothing to find
    ('a;b;c\n"1,5";2,5;3\n', ";"),  # decimal commas, quoted or not, do not outvote the delimiter
    ('id,note\n1,"x;y;z"\n2,"a|b"\n', ","),  # delimiters inside quotes do not count
    ('id,note\n1,"two\nlines; here"\n', ","),  # nor do line ends inside quotes
    ("a,b;c\n1,2;3\n", ","),  # a tie: the preferred one
    ("a;b;c,d\n1;2;3,4\n", ";"),  # more columns win
])
def test_delimiter_detection_choices(sample: str, expected: str) -> None:
    assert read.detect_delimiter(sample) == expected


def _zip_claiming(path: Path, entries: int) -> None:
    """A one-member zip whose end records (zip64, as a million entries need) claim `entries`."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.csv", "id\n1\n")
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    size, offset = int.from_bytes(data[eocd + 12:eocd + 16], "little"), int.from_bytes(data[eocd + 16:eocd + 20],
                                                                                        "little")
    zip64 = (b"PK\x06\x06" + (44).to_bytes(8, "little") + (45).to_bytes(2, "little") * 2 + bytes(8)
             + entries.to_bytes(8, "little") * 2 + size.to_bytes(8, "little") + offset.to_bytes(8, "little"))
    locator = b"PK\x06\x07" + bytes(4) + eocd.to_bytes(8, "little") + (1).to_bytes(4, "little")
    end = b"PK\x05\x06" + bytes(4) + b"\xff\xff" * 2 + b"\xff" * 8 + bytes(2)
    path.write_bytes(bytes(data[:eocd]) + zip64 + locator + end)


def test_a_zip_listing_a_million_entries_is_refused_unread(tmp_path: Path) -> None:
    bomb = tmp_path / "many.zip"
    _zip_claiming(bomb, 1_000_000)
    with pytest.raises(ReadError, match="lists 1000000 entries") as info:
        rows_of(bomb)
    assert info.value.code == "unreadable_input"
    honest = tmp_path / "one.zip"
    _zip_claiming(honest, 1)  # the same zip64 records, telling the truth: read as usual
    assert rows_of(honest)[1:] == (["id"], [(2, ["1"])])
    forty = tmp_path / "forty.zip"
    with zipfile.ZipFile(forty, "w") as z:
        for i in range(40):
            z.writestr(f"{i}.csv", "x\n")
    with pytest.raises(ReadError, match="lists 40 entries"):
        rows_of(forty)
