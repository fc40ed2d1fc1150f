"""The event loop `feedd serve` runs on: uvloop by default where it is installed with feedd (Linux and macOS
with CPython), the standard loop when `FEEDD_EVENT_LOOP=asyncio` asks for it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import MINIMAL, Daemon, write


def test_the_default_install_serves_on_uvloop(tmp_path: Path, daemons: list[Daemon]) -> None:
    # uvloop is one of feedd's dependencies on this platform: its absence is a broken install, not a skip.
    assert importlib.util.find_spec("uvloop") is not None
    d = Daemon(write(tmp_path, "feedd.yaml", MINIMAL))
    daemons.append(d)
    assert d.wait_log("ready")["event_loop"] == "uvloop"


@pytest.mark.parametrize("value", ["asyncio", "ASYNCIO"])
def test_the_standard_loop_on_request(tmp_path: Path, daemons: list[Daemon], value: str) -> None:
    d = Daemon(write(tmp_path, "feedd.yaml", MINIMAL), env={"FEEDD_EVENT_LOOP": value})
    daemons.append(d)
    assert d.wait_log("ready")["event_loop"] == "asyncio"
