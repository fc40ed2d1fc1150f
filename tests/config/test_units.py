"""Sizes, durations and ${VAR} as the contract writes them."""

from __future__ import annotations

import pytest

from feedd.config.units import UnitError, interpolate, parse_duration, parse_size


def test_sizes_and_durations_reject_garbage() -> None:
    for bad in ("ten", "-5", "1 parsec", True):
        with pytest.raises(UnitError):
            parse_size(bad)
    with pytest.raises(UnitError, match="use ms, s, m, h, d"):
        parse_duration("3 fortnights")
    assert parse_size("64MiB") == 64 * 1024**2 and parse_duration("500ms") == 0.5


def test_interpolation() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y", env) == "x1y"
    assert interpolate("${B:-dflt}", env) == "dflt"
    assert interpolate("${EMPTY:-dflt}", env) == "dflt"  # like the shell's :- , empty counts as unset
    assert interpolate("${EMPTY}", env) == ""
    assert interpolate("$${A} costs $5", env) == "${A} costs $5"
    with pytest.raises(UnitError, match="'B' is not set"):
        interpolate("${B}", env)
