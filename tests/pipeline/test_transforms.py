"""Every transform of the contract, and the errors a partner sees when one cannot apply."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from feedd.config.values import Transform
from feedd.pipeline.transforms import TransformError, compile_transforms


def run(value: Any, *transforms: Transform) -> Any:
    fn = compile_transforms(transforms)
    assert fn is not None
    return fn(value)


@pytest.mark.parametrize(("transform", "value", "expected"), [
    (Transform("trim"), "  a b  ", "a b"),
    (Transform("lower"), "MiXeD", "mixed"),
    (Transform("upper"), "MiXeD", "MIXED"),
    (Transform("title"), "ann o'neil", "Ann O'Neil"),
    (Transform("digits"), "+1 (555) 010-99", "155501099"),
    (Transform("null_if", ("", "n/a")), "n/a", None),
    (Transform("null_if", ("", "n/a")), "x", "x"),
    (Transform("replace", ("[^0-9.]", "")), "$1,234.50", "1234.50"),
    (Transform("date", "%m/%d/%Y"), "02/29/2024", date(2024, 2, 29)),
    (Transform("datetime", "%Y-%m-%d %H:%M"), "2024-05-01 13:45", datetime(2024, 5, 1, 13, 45)),
    (Transform("number", (",", ".")), "1.234.567,89", "1234567.89"),
    (Transform("number", (".", ",")), " 1,234.5 ", "1234.5"),
    (Transform("boolean", (("yes", "y"), ("no", "n"))), "Y", True),
    (Transform("boolean", (("yes", "y"), ("no", "n"))), "no", False),
    (Transform("map", {"a": "active", "l": "leave"}), "l", "leave"),
    (Transform("map", {"a": "active"}), "zzz", "zzz"),
    (Transform("default", "unknown"), "", "unknown"),
    (Transform("default", "unknown"), None, "unknown"),
    (Transform("default", "unknown"), "set", "set"),
    (Transform("truncate", 3), "abcdef", "abc"),
    (Transform("split", (" ", 0)), "Ann Lee", "Ann"),
    (Transform("split", (" ", -1)), "Ann Marie Lee", "Lee"),
    (Transform("split", (" ", 5)), "Ann Lee", None),
])
def test_each_transform(transform: Transform, value: Any, expected: Any) -> None:
    assert run(value, transform) == expected


@pytest.mark.parametrize("transform", [
    Transform("date", "%m/%d/%Y"), Transform("datetime", "%Y"), Transform("number", (".", "")),
    Transform("boolean", (("y",), ("n",))),
])
def test_parsing_transforms_read_a_blank_cell_as_no_value(transform: Transform) -> None:
    assert run("  ", transform) is None
    assert run("", transform) is None


def test_transforms_apply_in_order_and_pass_none_through() -> None:
    chain = (Transform("trim"), Transform("lower"), Transform("map", {"a": "active"}))
    assert run("  A ", *chain) == "active"
    assert run(None, *chain) is None
    assert compile_transforms(()) is None


@pytest.mark.parametrize(("transform", "value", "message"), [
    (Transform("date", "%m/%d/%Y"), "31/02/2024", "'31/02/2024' does not match %m/%d/%Y"),
    (Transform("datetime", "%Y-%m-%d %H:%M"), "yesterday", "'yesterday' does not match %Y-%m-%d %H:%M"),
    (Transform("number", (",", ".")), "12a", "'12a' is not a number (decimal ',', thousands '.')"),
    (Transform("boolean", (("yes",), ("no",))), "maybe", "'maybe' is not one of ['yes'] (true) or ['no'] (false)"),
])
def test_errors_say_what_was_expected(transform: Transform, value: str, message: str) -> None:
    with pytest.raises(TransformError) as info:
        run(value, transform)
    assert str(info.value) == message


@pytest.mark.parametrize("fmt", ["%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y", "%Y-%m-%d %H:%M:%S", "%Y%m%d", "%d %b %Y"])
@pytest.mark.parametrize("text", ["2024-02-29", "2024-2-9", "02/29/2024", "2/9/2024", "29.02.2024", "31.02.2024",
                                  "2024-01-05 3:04:05", "20240105", "05 Jan 2024", "2024-01-05x", " 1/2/2024",
                                  "2024-13-01", "0000-01-01", "2024-02-30", "2024-1-051", "2024-01-5 ", "2024-W01-1",
                                  "1999-12-31", "2024-00-10", "2024-01-00", "2024-+1-05", "2024-01-+5", "2024_01_05",
                                  "２０２４-01-05"])
def test_date_transforms_accept_exactly_what_strptime_accepts(fmt: str, text: str) -> None:
    try:
        expected: Any = datetime.strptime(text.strip(), fmt)
    except ValueError:
        expected = TransformError
    for name, want in (("date", expected.date() if isinstance(expected, datetime) else expected),
                       ("datetime", expected)):
        fn = compile_transforms([Transform(name, fmt)])
        assert fn is not None
        if want is TransformError:
            with pytest.raises(TransformError, match="does not match"):
                fn(text)
        else:
            assert fn(text) == want
