"""The side port under slow and silent clients: they cannot lock other clients out."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from feedd.http import app as http_app
from tests.http.conftest import ADMIN_KEY, Api
from tests.http.test_uploads import init, orders

CAP = 6


async def test_silent_and_slow_connections_at_the_cap_give_way_to_a_real_request(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_app, "MAX_CONNECTIONS", CAP)
    uid = (await init(api, total=1))["uploadId"]
    await api.session.close()  # its pooled connection would count too
    port = int(api.url.rsplit(":", 1)[1])

    # a part whose body is still arriving: a request in progress, which must not be cut
    body = json.dumps(orders(0, 50)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"PUT /outbound/uploads/{uid}/parts/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:100])
    await writer.drain()
    await asyncio.sleep(0.2)

    # then the rest of the cap: silent sockets and one sending its headers a line at a time
    hogs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CAP - 1)]
    hogs[0][1].write(b"GET /healthz HTTP/1.1\r\n")
    await asyncio.sleep(0.2)

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            for _ in range(3):
                async with fresh.get(f"{api.url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    assert resp.status == 200

        async def closed(r: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(r.read(), 2) == b""
            except TimeoutError:
                return False

        # the oldest idle connection made room; the later ones were not needed to
        assert await asyncio.gather(*(closed(r) for r, _ in hogs)) == [True] + [False] * (CAP - 2)
        writer.write(body[100:])  # the part in progress completes normally
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        writer.close()
        for _, w in hogs:
            w.close()
