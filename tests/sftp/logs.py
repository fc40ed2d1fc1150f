"""Log lines of an in-process feedd, as event dicts, and waiting on them with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from structlog.testing import capture_logs as _capture


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Every line logged meanwhile, debug included, with tracebacks rendered into `exception`."""
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with _capture(processors=[structlog.processors.format_exc_info]) as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=wrapper)


async def wait_for(condition: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.02)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


async def wait_scans(logs: list[dict[str, Any]], count: int, within: float = 15.0) -> None:
    """Until the watcher has finished `count` more reconciliation scans."""
    seen = len(events(logs, "watch.scanned"))
    await wait_for(lambda: len(events(logs, "watch.scanned")) >= seen + count, within)
