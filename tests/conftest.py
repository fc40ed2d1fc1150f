"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import Daemon


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemon subprocesses started by a test; killed at its end whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()
