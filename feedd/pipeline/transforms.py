"""Transforms from the config, compiled once per mapping into one function per field.

Each transform takes a value (a string, or what an earlier transform made of it; None when empty) and
returns the new value, or raises `TransformError` saying what was expected. Stages import nothing that
does I/O.
"""

from __future__ import annotations

import _strptime  # type: ignore[import-not-found]
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from feedd.config.values import Transform

Fn = Callable[[Any], Any]


class TransformError(ValueError):
    """A transform that cannot apply to this value: the message says what was expected."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _on_text(fn: Callable[[str], Any]) -> Fn:
    def apply(value: Any) -> Any:
        return None if value is None else fn(_text(value))

    return apply


def _on_filled(fn: Callable[[str], Any]) -> Fn:
    """For parsing transforms: an empty or blank cell is no value (None), not a parse error."""

    def apply(value: Any) -> Any:
        if value is None:
            return None
        text = _text(value)
        return fn(text) if text.strip() else None

    return apply


def _null_if(values: Sequence[str]) -> Fn:
    nulls = frozenset(values)
    return lambda v: None if v is None or _text(v) in nulls else v


def _replace(arg: tuple[str, str]) -> Fn:
    pattern, repl = re.compile(arg[0]), arg[1]
    return _on_text(lambda s: pattern.sub(repl, s))


def _date(fmt: str) -> Fn:
    return _strptime_transform(fmt, date_only=True)


def _datetime(fmt: str) -> Fn:
    return _strptime_transform(fmt, date_only=False)


def _strptime_transform(fmt: str, *, date_only: bool) -> Fn:
    parse = _parser(fmt, date_only=date_only)

    def apply(value: Any) -> Any:
        if value is None:
            return None
        s = (value if value.__class__ is str else str(value)).strip()
        if not s:
            return None  # an empty cell is no value, not a parse error
        try:
            return parse(s)
        except ValueError:
            raise TransformError(f"{value!r} does not match {fmt}") from None

    return apply


_NUMERIC = {"Y": 0, "m": 1, "d": 2, "H": 3, "M": 4, "S": 5}


def _parser(fmt: str, *, date_only: bool) -> Callable[[str], Any]:
    """`datetime.strptime(s, fmt)` (its `.date()` with `date_only`), faster for formats of only
    %Y %m %d %H %M %S: strptime's own regex for the format (so exactly the same strings are accepted),
    then the numbers straight into the constructor."""
    directives = set(re.findall(r"%(.)", fmt))
    compiled = getattr(getattr(_strptime, "_TimeRE_cache", None), "compile", None)
    if compiled is None or not {"Y", "m", "d"} <= directives <= set(_NUMERIC):
        if date_only:
            return lambda s: datetime.strptime(s, fmt).date()
        return lambda s: datetime.strptime(s, fmt)
    match = compiled(fmt).match
    iso = fmt == "%Y-%m-%d"
    if directives == {"Y", "m", "d"}:
        def parse_date(s: str) -> Any:
            if iso and len(s) == 10 and s[4] == "-" == s[7] and s.isascii():
                # dddd-dd-dd: date.fromisoformat agrees with strptime here and is ten times faster
                try:
                    made = date.fromisoformat(s)
                    return made if date_only else datetime(made.year, made.month, made.day)
                except ValueError:
                    pass  # not a valid date: strptime's way below gives the same answer and error
            found = match(s)
            if found is None or found.end() != len(s):
                raise ValueError(s)
            y, m, d = found.group("Y", "m", "d")
            made = date(int(y), int(m), int(d))
            return made if date_only else datetime(made.year, made.month, made.day)

        return parse_date
    order = sorted(directives, key=_NUMERIC.__getitem__)

    def parse(s: str) -> Any:
        found = match(s)
        if found is None or found.end() != len(s):
            raise ValueError(s)
        made = datetime(*map(int, found.group(*order)))  # type: ignore[arg-type]
        return made.date() if date_only else made

    return parse


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _number(arg: tuple[str, str]) -> Fn:
    decimal, thousands = arg

    def apply(s: str) -> Any:
        t = s.strip().replace(" ", "")
        if thousands:
            t = t.replace(thousands, "")
        if decimal and decimal != ".":
            t = t.replace(decimal, ".")
        if not _NUMBER.fullmatch(t):
            raise TransformError(f"{s!r} is not a number (decimal {decimal!r}, thousands {thousands!r})")
        return t

    return _on_filled(apply)


def _boolean(arg: tuple[tuple[str, ...], tuple[str, ...]]) -> Fn:
    truthy, falsy = frozenset(arg[0]), frozenset(arg[1])

    def apply(s: str) -> Any:
        key = s.strip().lower()
        if key in truthy:
            return True
        if key in falsy:
            return False
        raise TransformError(f"{s!r} is not one of {sorted(truthy)} (true) or {sorted(falsy)} (false)")

    return _on_filled(apply)


def _map(table: dict[Any, Any]) -> Fn:
    lookup = {str(k): v for k, v in table.items()}
    return lambda v: v if v is None else lookup.get(_text(v), v)


def _default(fallback: Any) -> Fn:
    return lambda v: fallback if v is None or v == "" else v


def _truncate(n: int) -> Fn:
    return _on_text(lambda s: s[:n])


def _split(arg: tuple[str, int]) -> Fn:
    sep, index = arg

    def apply(s: str) -> Any:
        parts = s.split(sep)
        return parts[index] if -len(parts) <= index < len(parts) else None

    return _on_text(apply)


_DIGITS = re.compile(r"\D+")

_FACTORIES: dict[str, Callable[[Any], Fn]] = {
    "trim": lambda _: _on_text(str.strip),
    "lower": lambda _: _on_text(str.lower),
    "upper": lambda _: _on_text(str.upper),
    "title": lambda _: _on_text(str.title),
    "digits": lambda _: _on_text(lambda s: _DIGITS.sub("", s)),
    "null_if": _null_if,
    "replace": _replace,
    "date": _date,
    "datetime": _datetime,
    "number": _number,
    "boolean": _boolean,
    "map": _map,
    "default": _default,
    "truncate": _truncate,
    "split": _split,
}


def compile_transforms(transforms: Sequence[Transform]) -> Fn | None:
    """One function applying `transforms` in order, or None when there are none."""
    fns = [_FACTORIES[t.name](t.arg) for t in transforms]
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def chain(value: Any) -> Any:
        for fn in fns:
            value = fn(value)
        return value

    return chain
