"""A located walk over a config tree: typed getters that collect every error instead of stopping."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from feedd.config.source import API, Loc, LocList, LocMap
from feedd.config.units import UnitError, interpolate, parse_duration, parse_size, suggest
from feedd.errors import ConfigIssue

T = TypeVar("T")
NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")


class Bad(Exception):
    """Raised by a converter; the reader turns it into a located issue."""


@dataclass(frozen=True, slots=True)
class At:
    loc: Loc
    path: str

    def key(self, m: LocMap, key: str) -> At:
        return At(m.locs.get(key, m.loc), f"{self.path}.{key}" if self.path else key)

    def item(self, seq: LocList, index: int) -> At:
        return At(seq.locs[index] if index < len(seq.locs) else seq.loc, f"{self.path}[{index}]")


Converter = Callable[["Reader", Any, At], T]


def describe(value: Any) -> str:
    if isinstance(value, LocMap):
        return "a mapping"
    if isinstance(value, LocList):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


class Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.issues: list[ConfigIssue] = []

    def issue(self, at: At, message: str) -> None:
        self.issues.append(ConfigIssue(at.loc.file, at.loc.line, at.path, message))

    def mapping(self, value: Any, at: At, allowed: Collection[str]) -> LocMap | None:
        """`value` as a mapping whose keys are all in `allowed`; unknown keys are reported."""
        if value is None:
            return None
        if not isinstance(value, LocMap):
            self.issue(at, f"expected a mapping, got {describe(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.issue(at.key(value, key), f"unknown key{suggest(key, allowed)}")
        return value

    def get(self, m: LocMap | None, at: At, key: str, conv: Converter[T], default: T) -> T:
        if m is None or key not in m or m[key] is None:
            return default
        sub = at.key(m, key)
        try:
            return conv(self, m[key], sub)
        except Bad as exc:
            self.issue(sub, str(exc))
            return default

    def require(self, m: LocMap | None, at: At, key: str, conv: Converter[T], default: T) -> T:
        if m is not None and (key not in m or m[key] is None):
            self.issue(at, f"missing required key {key!r}")
            return default
        return self.get(m, at, key, conv, default)

    def items(self, value: Any, at: At) -> list[tuple[Any, At]]:
        """A list's items with their locations (a single value counts as a list of one)."""
        if isinstance(value, LocList):
            return [(item, at.item(value, i)) for i, item in enumerate(value)]
        if isinstance(value, LocMap):
            self.issue(at, "expected a list, got a mapping")
            return []
        return [(value, at)]

    def named(self, value: Any, at: At, what: str) -> list[tuple[str, Any, At]]:
        """A mapping of name -> body where names must be safe in paths (`[a-z0-9_-]{1,64}`)."""
        if value is None:
            return []
        if not isinstance(value, LocMap):
            self.issue(at, f"expected a mapping of {what} names, got {describe(value)}")
            return []
        out = []
        for name, body in value.items():
            sub = at.key(value, name)
            if not NAME_RE.match(name):
                self.issue(sub, f"invalid {what} name {name!r}: use 1-64 of a-z, 0-9, '_' and '-'")
                continue
            out.append((name, body, sub))
        return out


# Converters: (reader, raw value, location) -> typed value, or raise Bad.


def string(r: Reader, v: Any, at: At) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise Bad(f"expected a string, got {describe(v)}")
    try:
        if at.loc.file == API:
            # The daemon's environment is the config file's to read: an API body that could name a variable
            # would let whoever sends it read the daemon's secrets back through answers and messages.
            if "${" in str(v):
                raise Bad("${...} is read from the environment only in the config file; "
                          "an object sent over the API holds the value itself")
            return str(v)
        return interpolate(str(v), r.env)
    except UnitError as exc:
        raise Bad(str(exc)) from None


def nonempty(r: Reader, v: Any, at: At) -> str:
    s = string(r, v, at)
    if not s.strip():
        raise Bad("expected a non-empty string")
    return s


def _from_text(r: Reader, v: Any, at: At) -> Any:
    return string(r, v, at).strip() if isinstance(v, str) else v


def integer(lo: int | None = None, hi: int | None = None) -> Converter[int]:
    def conv(r: Reader, v: Any, at: At) -> int:
        v = _from_text(r, v, at)
        if isinstance(v, str) and re.fullmatch(r"-?\d+", v):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise Bad(f"expected an integer, got {describe(v)}")
        if lo is not None and v < lo:
            raise Bad(f"expected an integer >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise Bad(f"expected an integer <= {hi}, got {v}")
        return v

    return conv


def number(lo: float | None = None, hi: float | None = None) -> Converter[float]:
    def conv(r: Reader, v: Any, at: At) -> float:
        v = _from_text(r, v, at)
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise Bad(f"expected a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise Bad(f"expected a number, got {describe(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise Bad(f"expected a number between {lo} and {hi}, got {v}")
        return float(v)

    return conv


def boolean(r: Reader, v: Any, at: At) -> bool:
    v = _from_text(r, v, at)
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "on", "off"):
        v = v.lower() in ("true", "yes", "on")
    if not isinstance(v, bool):
        raise Bad(f"expected true or false, got {describe(v)}")
    return v


def size(r: Reader, v: Any, at: At) -> int:
    try:
        return parse_size(_from_text(r, v, at))
    except UnitError as exc:
        raise Bad(str(exc)) from None


def duration(r: Reader, v: Any, at: At) -> float:
    try:
        return parse_duration(_from_text(r, v, at))
    except UnitError as exc:
        raise Bad(str(exc)) from None


def path(r: Reader, v: Any, at: At) -> Path:
    p = Path(nonempty(r, v, at)).expanduser()
    return p if p.is_absolute() else (at.loc.dir / p).resolve()


def choice(*options: str) -> Converter[str]:
    def conv(r: Reader, v: Any, at: At) -> str:
        s = string(r, v, at)
        if s not in options:
            raise Bad(f"expected one of {', '.join(options)}, got {s!r}{suggest(s, options)}")
        return s

    return conv


def strings(r: Reader, v: Any, at: At) -> tuple[str, ...]:
    out = []
    for item, sub in r.items(v, at):
        try:
            out.append(string(r, item, sub))
        except Bad as exc:
            r.issue(sub, str(exc))
    return tuple(out)


def http_url(r: Reader, v: Any, at: At) -> str:
    s = nonempty(r, v, at).strip()
    if not re.match(r"^https?://[^/\s]+", s):
        raise Bad(f"expected an http:// or https:// URL, got {s!r}")
    return s
