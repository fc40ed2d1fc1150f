"""The streaming check of an upload part: the same answers as parsing it whole, strict about the array."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd.pipeline import parts
from feedd.pipeline.parts import check_part


@pytest.mark.parametrize(("body", "expected"), [
    (b" [ ] \n", (0, None)),
    (b'[{"a": 1}, \n {"b": [1, {"c": null}]} ]', (2, None)),
    (b'[{"a": 1}, 2, {}]', (0, "element 1 is not an object (a int)")),
    (b'[{"a": 1}, null]', (0, "element 1 is not an object (a null)")),
    (b'{"a": 1}', (0, "the part must be a JSON array of objects")),
    (b"[{", (0, "the part is not valid JSON: Expecting property name enclosed in double quotes (element 0)")),
    (b'[{"a": 1}] x', (0, "the part is not valid JSON: text after the array's closing ']'")),
    (b'[{"a": 1} {"b": 2}]', (0, "the part is not valid JSON: expected ',' or ']' after element 0")),
    (b'[{"a": NaN}]', (0, "the part is not valid JSON: element 0: NaN is not valid JSON")),
    (b'[{"a": 1' + b"9" * 5000 + b"}]", (1, None)),  # past Python's int digits: still a number
])
def test_answers(tmp_path: Path, body: bytes, expected: tuple[int, str | None]) -> None:
    path = tmp_path / "part.json"
    path.write_bytes(body)
    assert check_part(str(path)) == expected


@pytest.mark.parametrize(("tail", "kind"), [(b"12e5]", "float"), (b"125]", "int"), (b'"abc"]', "str")])
def test_an_element_cut_by_a_block_end_is_read_whole(tmp_path: Path, tail: bytes, kind: str) -> None:
    for n in range(1, 6):
        body = b"[" + b'{"a":1},' * n
        body += b" " * (parts.BLOCK - len(body) - 2) + tail  # the value straddles the first block's end
        path = tmp_path / "part.json"
        path.write_bytes(body)
        assert check_part(str(path)) == (0, f"element {n} is not an object (a {kind})")


@pytest.mark.parametrize("whole", [True, False])
def test_an_element_over_the_limit_is_refused_whether_the_part_is_parsed_whole_or_streamed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool) -> None:
    """Parts up to `WHOLE` bytes are parsed in one go with orjson: that path must refuse what the stream
    refuses, and give the same counts."""
    monkeypatch.setattr(parts, "WHOLE", 4 * 1024**2 if whole else 0)
    big = b'{"note": "' + b"x" * (parts.MAX_ELEMENT + 2 * parts.BLOCK) + b'"}'
    path = tmp_path / "part.json"
    path.write_bytes(b'[{"a": 1}, ' + big + b"]")
    assert check_part(str(path)) == (0, f"element 1 is larger than {parts.MAX_ELEMENT} characters")
    path.write_bytes(b"[" + b",".join([b'{"a": 1}'] * 1000) + b"]")
    assert check_part(str(path)) == (1000, None)
