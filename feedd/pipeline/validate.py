"""Field rules from the schema, compiled once per pipeline into one checker per field.

A checker takes the mapped value and returns the typed output value (integers as numbers, decimals as
exact strings, dates and datetimes in ISO 8601) or raises `FieldError` with a code and a message that
says which value failed and what was expected.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from feedd.config.values import FieldSpec, FieldType

Check = Callable[[Any], Any]
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_INTEGER = re.compile(r"[+-]?\d+")
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off"})


class FieldError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else repr(str(value))
    return text if len(text) <= 60 else text[:57] + "...'"


def _to_string(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _to_integer(value: Any) -> int:
    if isinstance(value, bool):
        raise FieldError("type", f"{_show(value)} is not an integer")
    if isinstance(value, int):
        return value
    text = _to_string(value).strip()
    if not _INTEGER.fullmatch(text) or len(text) > 30:
        raise FieldError("type", f"{_show(value)} is not an integer")
    return int(text)


def _to_decimal(value: Any) -> Decimal:
    try:
        number = Decimal(_to_string(value).strip())
    except InvalidOperation:
        raise FieldError("type", f"{_show(value)} is not a decimal number") from None
    if not number.is_finite():
        raise FieldError("type", f"{_show(value)} is not a decimal number")
    return number


def _to_number(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise FieldError("type", f"{_show(value)} is not a number")
    return number


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    key = _to_string(value).strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise FieldError("type", f"{_show(value)} is not a boolean (true/false, yes/no, 1/0)")


def _to_date(value: Any) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = _to_string(value).strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise FieldError("type", f"{_show(value)} is not a date (YYYY-MM-DD)") from None


def _to_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    text = _to_string(value).strip()
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise FieldError("type", f"{_show(value)} is not a date and time (ISO 8601)") from None


def _to_email(value: Any) -> str:
    text = _to_string(value).strip()
    if not _EMAIL.fullmatch(text):
        raise FieldError("type", f"{_show(value)} is not an email address")
    return text


_CONVERT: dict[FieldType, Callable[[Any], Any]] = {
    FieldType.STRING: _to_string,
    FieldType.INTEGER: _to_integer,
    FieldType.DECIMAL: _to_decimal,
    FieldType.NUMBER: _to_number,
    FieldType.BOOLEAN: _to_boolean,
    FieldType.DATE: _to_date,
    FieldType.DATETIME: _to_datetime,
    FieldType.EMAIL: _to_email,
    FieldType.ENUM: _to_string,
}


def compile_field(spec: FieldSpec) -> Check:
    """The checker for one field: empty -> default or required error; else convert, then each rule."""
    convert = _CONVERT[spec.type]
    rules: list[Callable[[Any], None]] = []
    if spec.type is FieldType.ENUM:
        allowed = frozenset(spec.values)
        shown = ", ".join(spec.values)

        def enum_rule(v: str) -> None:
            if v not in allowed:
                raise FieldError("enum", f"{_show(v)} is not one of {shown}")

        rules.append(enum_rule)
    if spec.pattern is not None:
        pattern = re.compile(spec.pattern)

        def pattern_rule(v: str) -> None:
            if not pattern.search(v):
                raise FieldError("pattern", f"{_show(v)} does not match {spec.pattern}")

        rules.append(pattern_rule)
    if spec.min_length is not None:
        low = spec.min_length
        rules.append(lambda v: _fail_if(len(v) < low, "min_length", f"{_show(v)} is shorter than {low} characters"))
    if spec.max_length is not None:
        high = spec.max_length
        rules.append(lambda v: _fail_if(len(v) > high, "max_length", f"{_show(v)} is longer than {high} characters"))
    if spec.min is not None or spec.max is not None:
        rules.extend(_range_rules(spec))
    default = None if spec.default is None else _output(convert(spec.default))
    required = spec.required
    exact = spec.type is FieldType.DECIMAL  # the only type whose output differs from its checked value

    def check(value: Any) -> Any:
        if value is None or (value.__class__ is str and not value.strip()):
            if default is not None:
                return default
            if required:
                raise FieldError("required", "is required")
            return None
        typed = convert(value)
        for rule in rules:
            rule(typed)
        return str(typed) if exact else typed

    return check


def _fail_if(condition: bool, code: str, message: str) -> None:
    if condition:
        raise FieldError(code, message)


def _range_rules(spec: FieldSpec) -> list[Callable[[Any], None]]:
    """min/max: numbers compare as numbers (decimals exactly), dates and datetimes as ISO text."""
    bound: Callable[[Any], Any]
    if spec.type is FieldType.DECIMAL:
        bound = lambda b: Decimal(str(b))  # noqa: E731 - one line per kind reads best
    elif spec.type in (FieldType.INTEGER, FieldType.NUMBER):
        bound = float
    else:
        bound = str
    out: list[Callable[[Any], None]] = []
    if spec.min is not None:
        low, low_text = bound(spec.min), spec.min
        out.append(lambda v: _fail_if(v < low, "min", f"{_show(v)} is less than the minimum {low_text}"))
    if spec.max is not None:
        high, high_text = bound(spec.max), spec.max
        out.append(lambda v: _fail_if(v > high, "max", f"{_show(v)} is more than the maximum {high_text}"))
    return out


def _output(value: Any) -> Any:
    """JSON-ready: decimals stay exact as strings; floats that are whole stay floats."""
    return str(value) if isinstance(value, Decimal) else value


@dataclass(slots=True)
class Unique:
    """Seen values of one `unique` field within a run, as 8-byte digests: memory per row, not per value size."""

    seen: set[bytes]

    @classmethod
    def new(cls) -> Unique:
        return cls(set())

    def check(self, value: Any) -> None:
        if value is None:
            return
        digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
        if digest in self.seen:
            raise FieldError("unique", f"{_show(value)} appears more than once in this file")
        self.seen.add(digest)
