"""Scalar syntaxes shared by config keys: sizes, durations, `${VAR}` interpolation, name suggestions."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUM_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class UnitError(ValueError):
    pass


def parse_size(value: object) -> int:
    """Bytes from an int or a string like `10MiB`, `1GB`, `512k` (decimal units are powers of 1000)."""
    if isinstance(value, bool):
        raise UnitError(f"expected a size like 10MiB or a number of bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"expected a size >= 0, got {value}")
        return value
    if isinstance(value, str) and (m := _NUM_UNIT.match(value)):
        unit = m.group(2).lower()
        if unit in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
        raise UnitError(f"unknown size unit {m.group(2)!r}{suggest(unit, _SIZE_UNITS)} "
                        "(use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")
    raise UnitError(f"expected a size like 10MiB or a number of bytes, got {value!r}")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like `500ms`, `30s`, `5m`, `2h`, `1d`."""
    if isinstance(value, bool):
        raise UnitError(f"expected a duration like 30s or a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError(f"expected a duration >= 0, got {value}")
        return float(value)
    if isinstance(value, str) and (m := _NUM_UNIT.match(value)):
        unit = m.group(2).lower()
        if unit in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[unit]
        raise UnitError(f"unknown duration unit {m.group(2)!r} (use ms, s, m, h, d)")
    raise UnitError(f"expected a duration like 30s or a number of seconds, got {value!r}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}` from `env`; `$${` stands for a literal `${`."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        raise UnitError(f"environment variable {name!r} is not set "
                        f"(write ${{{name}:-default}} to give a default)")

    return _ENV.sub(repl, text)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest candidate, or an empty string when nothing is close."""
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
