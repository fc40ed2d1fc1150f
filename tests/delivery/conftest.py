"""Real receivers on loopback for deliveries and events: an HTTP server that answers as a test says and
records what it got, and fixtures from the side-API tests (a real daemon)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.http.conftest import demo_key, host_key, start_api

__all__ = ["demo_key", "host_key", "start_api"]

SECRET = "whsec_" + base64.b64encode(b"a test secret of reasonable size").decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next status of `script[path]` (the last one repeats)."""

    port: int = 0
    script: dict[str, list[int]] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    got: list[Received] = field(default_factory=list)
    redirect: dict[str, str] = field(default_factory=dict)  # path -> Location, answered with 307

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(Received(request.path, dict(request.headers), body))
        if (pause := self.delay.get(request.path)) is not None:
            await asyncio.sleep(pause)
        if (location := self.redirect.get(request.path)) is not None:
            return web.Response(status=307, headers={"Location": location})
        statuses = self.script.get(request.path, [200])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return web.Response(status=status, headers={"Retry-After": "0"} if status == 503 else None)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async for r in _serve():
        yield r


@pytest.fixture
async def elsewhere() -> AsyncIterator[Receiver]:
    """A second receiver, for what must never reach it (a redirect's target)."""
    async for r in _serve():
        yield r


async def _serve() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", r.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.port = runner.addresses[0][1]
    yield r
    await runner.cleanup()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check, written here from the spec (not feedd's code): HMAC-SHA256 over
    "id.timestamp.body" with the base64 key after `whsec_`; any `v1,` signature may match."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part.split(",", 1)[1] == expected for part in headers["webhook-signature"].split(" "))
