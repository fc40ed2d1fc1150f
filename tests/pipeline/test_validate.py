"""Every field type and rule of the contract: typed output, and errors that name value and expectation."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from feedd.config.values import FieldSpec, FieldType
from feedd.pipeline.validate import FieldError, Unique, compile_field


def check(spec: FieldSpec, value: Any) -> Any:
    return compile_field(spec)(value)


def error(spec: FieldSpec, value: Any) -> tuple[str, str]:
    with pytest.raises(FieldError) as info:
        compile_field(spec)(value)
    return info.value.code, info.value.message


@pytest.mark.parametrize(("ftype", "value", "expected"), [
    (FieldType.STRING, "x", "x"),
    (FieldType.INTEGER, " 42 ", 42),
    (FieldType.INTEGER, "-7", -7),
    (FieldType.DECIMAL, "1234.50", "1234.50"),
    (FieldType.DECIMAL, "0.1", "0.1"),
    (FieldType.NUMBER, "1e3", 1000.0),
    (FieldType.BOOLEAN, "Yes", True),
    (FieldType.BOOLEAN, "0", False),
    (FieldType.BOOLEAN, True, True),
    (FieldType.DATE, "2024-02-29", "2024-02-29"),
    (FieldType.DATE, date(2024, 1, 2), "2024-01-02"),
    (FieldType.DATETIME, "2024-05-01T13:45:00Z", "2024-05-01T13:45:00+00:00"),
    (FieldType.DATETIME, datetime(2024, 5, 1, 13, 45), "2024-05-01T13:45:00"),
    (FieldType.EMAIL, "ann@example.org", "ann@example.org"),
])
def test_types_give_typed_output(ftype: FieldType, value: Any, expected: Any) -> None:
    assert check(FieldSpec("f", ftype), value) == expected


@pytest.mark.parametrize(("ftype", "value", "message"), [
    (FieldType.INTEGER, "1.5", "'1.5' is not an integer"),
    (FieldType.INTEGER, "9" * 40, "is not an integer"),
    (FieldType.DECIMAL, "12,50", "'12,50' is not a decimal number"),
    (FieldType.DECIMAL, "NaN", "'NaN' is not a decimal number"),
    (FieldType.NUMBER, "inf", "'inf' is not a number"),
    (FieldType.BOOLEAN, "maybe", "'maybe' is not a boolean (true/false, yes/no, 1/0)"),
    (FieldType.DATE, "31/02/2024", "'31/02/2024' is not a date (YYYY-MM-DD)"),
    (FieldType.DATE, "2024-02-30", "'2024-02-30' is not a date (YYYY-MM-DD)"),
    (FieldType.DATETIME, "noon", "'noon' is not a date and time (ISO 8601)"),
    (FieldType.EMAIL, "ann.example.org", "'ann.example.org' is not an email address"),
    (FieldType.EMAIL, "ann@localhost", "'ann@localhost' is not an email address"),
])
def test_type_errors(ftype: FieldType, value: str, message: str) -> None:
    code, text = error(FieldSpec("f", ftype), value)
    assert code == "type" and message in text


def test_required_default_and_empty() -> None:
    assert error(FieldSpec("f", FieldType.STRING, required=True), "  ") == ("required", "is required")
    assert error(FieldSpec("f", FieldType.STRING, required=True), None) == ("required", "is required")
    assert check(FieldSpec("f", FieldType.INTEGER), "") is None
    assert check(FieldSpec("f", FieldType.BOOLEAN, required=True, default=True), "") is True
    assert check(FieldSpec("f", FieldType.DECIMAL, default="0.00"), None) == "0.00"


def test_string_rules() -> None:
    spec = FieldSpec("employee_id", FieldType.STRING, pattern="^E[0-9]{4,}$", min_length=5, max_length=8)
    assert check(spec, "E1234") == "E1234"
    assert error(spec, "X1234") == ("pattern", "'X1234' does not match ^E[0-9]{4,}$")
    assert error(FieldSpec("f", FieldType.STRING, min_length=3), "ab") == ("min_length",
                                                                            "'ab' is shorter than 3 characters")
    assert error(FieldSpec("f", FieldType.STRING, max_length=3), "abcd") == ("max_length",
                                                                              "'abcd' is longer than 3 characters")


def test_enum() -> None:
    spec = FieldSpec("status", FieldType.ENUM, values=("active", "leave"))
    assert check(spec, "leave") == "leave"
    assert error(spec, "gone") == ("enum", "'gone' is not one of active, leave")


def test_ranges_compare_as_their_type() -> None:
    salary = FieldSpec("salary", FieldType.DECIMAL, min=0, max=100000)
    assert check(salary, "100000.00") == "100000.00"
    assert error(salary, "-0.01") == ("min", "'-0.01' is less than the minimum 0")
    grade = FieldSpec("grade", FieldType.INTEGER, min=1, max=12)
    assert error(grade, "13") == ("max", "'13' is more than the maximum 12")
    hired = FieldSpec("hired_on", FieldType.DATE, min="2000-01-01")
    assert check(hired, "2000-01-01") == "2000-01-01"
    assert error(hired, "1999-12-31") == ("min", "'1999-12-31' is less than the minimum 2000-01-01")


def test_unique_within_a_run() -> None:
    seen = Unique.new()
    seen.check("E0001")
    seen.check("E0002")
    seen.check(None)
    seen.check(None)  # empty values are not duplicates of each other
    with pytest.raises(FieldError) as info:
        seen.check("E0001")
    assert info.value.code == "unique" and "'E0001' appears more than once" in info.value.message
    assert seen.count == 2


def test_unique_keeps_every_key_through_growth_and_tells_close_values_apart() -> None:
    seen = Unique.new()
    values: list[Any] = [*range(-3, 150_000), 2**70, 2**70 + 1, 2**61 - 1, 2**62, 2**63 - 1]
    for v in values:
        seen.check(v)  # -1 and -2 hash alike in CPython, as do 0 and 2**61 - 1: none is a duplicate here
    text = Unique.new()
    for t in ("-1", "E1", "e1", "E1 "):
        text.check(t)
    assert seen.count == len(values) and len(seen.table) >= seen.count / 0.7 and seen.bits > 16
    for v in (-1, -2, 149_999, 2**70 + 1):
        with pytest.raises(FieldError):
            seen.check(v)
    with pytest.raises(FieldError):
        text.check("E1")


def test_unique_integers_in_bitmaps_stay_small_and_exact() -> None:
    ids = Unique(ints=True)
    values = [*range(-70_000, 1_000_000), 2**70, -(2**70)]
    for v in values:
        ids.check_int(v)
    ids.check_int(None)
    ids.check_int(None)
    assert ids.dense and ids.count == len(values)
    assert len(ids.chunks) * 8192 < 200_000 and ids.table.itemsize * len(ids.table) < 600_000  # not 16 MiB
    for v in (-70_000, -1, 0, 65_535, 65_536, 999_999, 2**70, -(2**70)):
        with pytest.raises(FieldError) as info:
            ids.check_int(v)
        assert f"'{v}' appears more than once" in info.value.message


def test_unique_sparse_integers_move_from_bitmaps_to_hashes_and_keep_every_key() -> None:
    ids = Unique(ints=True)
    sparse = [n * 1_000_003 + 17 for n in range(2_000)]  # a new 65,536 block for nearly every value
    for v in sparse:
        ids.check_int(v)
    assert not ids.dense and not ids.chunks and ids.count == len(sparse)
    for v in (sparse[0], sparse[300], sparse[-1]):  # seen while in bitmaps, then after the move
        with pytest.raises(FieldError):
            ids.check_int(v)
    ids.check_int(sparse[-1] + 1)
    assert ids.count == len(sparse) + 1
