"""Fixtures shared by every test package."""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Generator, Iterator

import pytest

from tests.helpers import Daemon

# pytest-timeout's signal fails a test that runs too long, but it fires once and only where Python code runs:
# a teardown that then waits forever, or a wait inside C code, would hang the whole suite. This second,
# later limit covers setup, call and teardown together and ends the process with every thread's stack.
HARD_LIMIT_SECONDS = float(os.environ.get("FEEDD_TEST_HARD_LIMIT", "300"))
_stderr: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    # Output capture is paused here, so fd 2 is the real stderr; during a test it is a capture file.
    _stderr.append(os.dup(2))


def pytest_unconfigure(config: pytest.Config) -> None:
    # A thread left running (a store nobody closed) would keep the process from exiting after the summary.
    faulthandler.dump_traceback_later(60, exit=True, file=_stderr[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    faulthandler.dump_traceback_later(HARD_LIMIT_SECONDS, exit=True, file=_stderr[0])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemon subprocesses started by a test; killed at its end whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()
