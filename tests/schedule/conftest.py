"""A real feedd in this process whose schedule reads a clock the test moves, and a real webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.model import utcnow
from tests.delivery.conftest import receiver
from tests.helpers import DEMO_HASH, write
from tests.http.conftest import ADMIN_KEY, CONFIG, DEMO_KEY, Api, demo_key, host_key, sha

__all__ = ["demo_key", "host_key", "receiver"]

T = TypeVar("T")


class Clock:
    """The schedule's now: where the test puts it (the real time while it puts it nowhere)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now or utcnow()


@pytest.fixture
async def start_feedd(tmp_path: Path, host_key: Path) -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """Start feedd (the same config file and state each time in a test); stopped at the end."""
    running: list[tuple[Daemon, aiohttp.ClientSession]] = []

    async def start(clock: Clock, *, pipeline_extra: str = "", extra: str = "", workers: int = 1) -> Api:
        text = CONFIG + extra
        for name, value in {
            "host_key": str(host_key),
            "hash": DEMO_HASH,
            "admin": sha(ADMIN_KEY),
            "demo": sha(DEMO_KEY),
            "http_extra": "",
            "pipeline_extra": pipeline_extra,
            "sftp_extra": "",
        }.items():
            text = text.replace(f"@{name}@", value)
        path = write(tmp_path, "feedd.yaml", text)
        daemon = Daemon(load_config(path, env={}), drain_seconds=2, workers=workers, clock=clock, tick=0.05)
        await daemon.start()
        session = aiohttp.ClientSession()
        running.append((daemon, session))
        assert daemon.http is not None
        return Api(daemon, f"http://127.0.0.1:{daemon.http.addresses[0].port}", session, path)

    yield start
    for daemon, session in running:
        await session.close()
        await daemon.stop()


async def stop(api: Api) -> None:
    await api.session.close()
    await api.daemon.stop()


def outbox(api: Api) -> Path:
    assert api.daemon.spaces is not None
    space = api.daemon.spaces.get("demo")
    assert space is not None
    return space.outbox
