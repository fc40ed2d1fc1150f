"""A real feedd (in this process) with its HTTP side port and SFTP port, and keys of both kinds."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.model import Run, RunStatus
from tests.helpers import DEMO_HASH, write
from tests.sftp.conftest import demo_key, host_key

__all__ = ["demo_key", "host_key"]

ADMIN_KEY = "admin-key-0123456789"
DEMO_KEY = "demo-only-key-0123456789"
TERMINAL = (RunStatus.COMPLETED, RunStatus.DELIVERED, RunStatus.FAILED)

CONFIG = """\
state_dir: ./var
log: {level: debug, format: json}
sftp:
  listen: "127.0.0.1:0"
  host_keys: ["@host_key@"]
  settle: 300ms
  @sftp_extra@
http:
  listen: "127.0.0.1:0"
  max_part_size: 1MiB
  @http_extra@
  api_keys:
    - {name: admin, key_sha256: "@admin@", connections: ["*"], role: admin}
    - {name: demo-app, key_sha256: "@demo@", connections: [demo]}
schemas:
  order:
    fields:
      order_id: {type: string, required: true, unique: true}
      amount:   {type: decimal, required: true, min: 0}
      placed:   {type: date}
  contact:
    fields:
      email: {type: email, required: true}
connections:
  demo:
    password_hash: "@hash@"
  acme:
    password_hash: "@hash@"
pipelines:
  demo-orders-out:
    connection: demo
    schema: order
    direction: outbound
    output: {format: csv, filename: "orders-{run_id}.{ext}"}
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv"]
    @pipeline_extra@
  acme-orders-out:
    connection: acme
    schema: order
    direction: outbound
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Api:
    daemon: Daemon
    url: str
    session: aiohttp.ClientSession
    config_path: Path

    @property
    def sftp_port(self) -> int:
        assert self.daemon.sftp is not None
        return self.daemon.sftp.addresses[0].port

    async def call(self, method: str, path: str, *, key: str | None = ADMIN_KEY, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.session.request(method, self.url + path, headers=headers, **kw) as resp:
            text = await resp.text()
            body: Any = text
            if resp.content_type == "application/json":
                body = await resp.json()
            return resp.status, body

    async def wait_run(self, run_id: str, within: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            status, run = await self.call("GET", f"/runs/{run_id}")
            assert status == 200, run
            pending = any(d["status"] == "pending" for d in run["deliveries"])
            if run["status"] in TERMINAL and not pending:
                return run  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run_id} not finished: {run}")

    async def runs(self) -> list[Run]:
        from feedd.store import RunQuery

        assert self.daemon.store is not None
        runs, _ = await self.daemon.store.list_runs(RunQuery(limit=1000, oldest_first=True))
        return runs


@pytest.fixture
async def start_api(tmp_path: Path, host_key: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[Daemon, aiohttp.ClientSession]] = []

    async def start(workers: int = 1, http_extra: str = "", pipeline_extra: str = "", extra: str = "",
                    sftp_extra: str = "") -> Api:
        text = CONFIG + extra
        for name, value in {"host_key": str(host_key), "hash": DEMO_HASH, "admin": sha(ADMIN_KEY),
                            "demo": sha(DEMO_KEY), "http_extra": http_extra, "pipeline_extra": pipeline_extra,
                            "sftp_extra": sftp_extra}.items():
            text = text.replace(f"@{name}@", value)
        path = write(tmp_path, "feedd.yaml", text)
        daemon = Daemon(load_config(path, env={}), drain_seconds=2, workers=workers)
        await daemon.start()
        session = aiohttp.ClientSession()
        started.append((daemon, session))
        assert daemon.http is not None
        address = daemon.http.addresses[0]
        return Api(daemon, f"http://127.0.0.1:{address.port}", session, path)

    yield start
    for daemon, session in started:
        await session.close()
        await daemon.stop()


@pytest.fixture
def fast_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The minimum body rate (4 KB/s), checked over short windows so that a test sees it act at once."""
    from feedd.http import limits

    monkeypatch.setattr(limits, "MIN_BODY_RATE", 4096)
    monkeypatch.setattr(limits, "RATE_WINDOW", 0.4)
    monkeypatch.setattr(limits, "RATE_GRACE", 0.4)


@pytest.fixture
async def api(start_api: Callable[..., Any]) -> Api:
    return await start_api()  # type: ignore[no-any-return]
