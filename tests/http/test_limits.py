"""The side port under slow, silent and greedy clients: they cannot lock other clients out (connections,
requests in flight per key and per address, a minimum body rate)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from feedd import log
from feedd.http import app as http_app
from feedd.http import limits
from tests.http.conftest import ADMIN_KEY, DEMO_KEY, Api
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


class Slow:
    """A request whose headers and first bytes are sent, and whose body then waits (a raw socket, from
    one loopback address: a real client would not hold back)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes) -> None:
        self.reader, self.writer, self.rest = reader, writer, rest

    @classmethod
    async def start(cls, api: Api, method: str, path: str, body: bytes, *, key: str, source: str = "127.0.0.2",
                    sent: int = 1, headers: str = "") -> Slow:
        port = int(api.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n{headers}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
        await writer.drain()
        return cls(reader, writer, body[sent:])

    async def answer(self) -> tuple[int, dict[str, str], Any]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 15)
        lines = head.decode("latin-1").split("\r\n")
        found = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        raw = await asyncio.wait_for(self.reader.readexactly(int(found.get("content-length", "0"))), 15)
        return int(lines[0].split()[1]), found, json.loads(raw) if raw else None

    async def finish(self) -> tuple[int, dict[str, str], Any]:
        self.writer.write(self.rest)
        await self.writer.drain()
        return await self.answer()

    def close(self) -> None:
        self.writer.close()


def session_from(source: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0), force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=15))


async def get(session: aiohttp.ClientSession, api: Api, path: str, key: str) -> tuple[int, dict[str, str], Any]:
    async with session.get(api.url + path, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def until_refused(session: aiohttp.ClientSession, api: Api, key: str) -> tuple[int, dict[str, str], Any]:
    """Ask until the cap answers (the held requests reach the server in their own time)."""
    answer: tuple[int, dict[str, str], Any] = (0, {}, None)
    for _ in range(200):  # bounded: ~10 s
        answer = await get(session, api, "/connections", key)
        if answer[0] == 429:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"never refused: {answer}")


def held_part() -> bytes:
    return json.dumps(orders(0, 20)).encode()


@contextlib.asynccontextmanager
async def three_held_parts(api: Api, key: str) -> AsyncIterator[tuple[list[Slow], aiohttp.ClientSession,
                                                                       aiohttp.ClientSession]]:
    """Three part bodies held open by `key` (from 127.0.0.2, as `Slow` sends them), and two clients:
    `same` from 127.0.0.2, `other` from 127.0.0.3."""
    uid = (await init(api, total=3))["uploadId"]
    held = [await Slow.start(api, "PUT", f"/outbound/uploads/{uid}/parts/{n}", held_part(), key=key)
            for n in (1, 2, 3)]
    try:
        async with session_from("127.0.0.2") as same, session_from("127.0.0.3") as other:
            yield held, same, other
    finally:
        for slow in held:
            slow.close()


async def test_one_key_holds_at_most_its_cap_and_other_keys_go_on(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "PER_KEY", 3)
    async with three_held_parts(api, DEMO_KEY) as (held, same, other):
        status, headers, body = await until_refused(same, api, DEMO_KEY)  # the 4th of this key
        assert status == 429 and headers["Retry-After"].isdigit()
        assert body["error"]["code"] == "too_many_requests" and "API key" in body["error"]["message"]
        for session in (same, other):  # another key, from the same address or another
            for _ in range(5):
                assert (await get(session, api, "/runs", ADMIN_KEY))[0] == 200
        assert (await get(other, api, "/connections", DEMO_KEY))[0] == 429  # the key's cap, wherever from
        for slow in held:  # the held parts arrive whole and are stored as usual
            status, _, part = await slow.finish()
            assert status == 200 and part["records"] == 20, part
        assert (await get(same, api, "/connections", DEMO_KEY))[0] == 200


async def test_one_address_holds_at_most_its_cap(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "PER_ADDRESS", 3)
    async with three_held_parts(api, ADMIN_KEY) as (_held, same, other):
        status, _, body = await until_refused(same, api, DEMO_KEY)  # another key, the same address
        assert status == 429 and "address" in body["error"]["message"]
        assert (await get(other, api, "/connections", DEMO_KEY))[0] == 200
        assert (await get(other, api, "/runs", ADMIN_KEY))[0] == 200


async def test_a_share_of_all_slots_is_kept_for_clients_holding_none(api: Api,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "TOTAL", 5)
    monkeypatch.setattr(limits, "RESERVED", 2)
    async with three_held_parts(api, ADMIN_KEY) as (_held, same, other):
        status, _, body = await until_refused(same, api, ADMIN_KEY)
        assert status == 429 and "busy" in body["error"]["message"]
        for _ in range(5):  # a key and an address holding nothing still get in
            assert (await get(other, api, "/connections", DEMO_KEY))[0] == 200


async def test_a_stalled_or_trickling_body_is_cut_with_408(api: Api, fast_rate: None) -> None:
    uid = (await init(api, total=2))["uploadId"]
    stalled = await Slow.start(api, "PUT", f"/outbound/uploads/{uid}/parts/1", held_part(), key=DEMO_KEY,
                               sent=10)
    trickle = await Slow.start(api, "PUT", f"/outbound/uploads/{uid}/parts/2", held_part(), key=DEMO_KEY,
                               sent=10)
    json_body = json.dumps({"connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": 1}).encode()
    small = await Slow.start(api, "POST", "/outbound/uploads", json_body, key=DEMO_KEY, sent=5)
    try:
        async def drip() -> None:  # 100 bytes every 0.1 s: 1 KB/s, under the 4 KB/s asked for
            for i in range(0, len(trickle.rest), 100):
                trickle.writer.write(trickle.rest[i:i + 100])
                await asyncio.sleep(0.1)

        dripping = asyncio.create_task(drip())
        for slow in (stalled, trickle, small):
            status, _, body = await slow.answer()
            assert status == 408 and body["error"]["code"] == "request_timeout", body
            assert "slower than 4096 bytes/s" in body["error"]["message"]
        dripping.cancel()
        status, state = await api.call("GET", f"/outbound/uploads/{uid}", key=DEMO_KEY)
        assert state["partsReceived"] == []  # nothing of a cut part is kept
        # a body that keeps up is not cut, however long it takes in all
        status, part = await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", key=DEMO_KEY, data=held_part())
        assert status == 200, part
    finally:
        for slow in (stalled, trickle, small):
            slow.close()


async def test_a_client_gone_mid_body_is_one_log_line_without_traceback(api: Api) -> None:
    out = io.StringIO()
    log.configure("info", "json", stream=out)
    uid = (await init(api, total=1))["uploadId"]
    slow = await Slow.start(api, "PUT", f"/outbound/uploads/{uid}/parts/1", held_part(), key=DEMO_KEY, sent=100)
    await asyncio.sleep(0.1)
    slow.writer.transport.abort()  # the connection is cut, as when a client dies or is evicted
    entries: list[dict[str, Any]] = []
    for _ in range(200):  # bounded: ~10 s
        entries = [json.loads(line) for line in out.getvalue().splitlines()]
        if any(e["event"] == "http.client_gone" for e in entries):
            break
        await asyncio.sleep(0.05)
    [gone] = [e for e in entries if e["event"] == "http.client_gone"]
    assert gone["path"] == f"/outbound/uploads/{uid}/parts/1" and gone["level"] == "info"
    assert not [e for e in entries if "exception" in e or e["level"] == "error"], entries
    status, state = await api.call("GET", f"/outbound/uploads/{uid}")
    assert status == 200 and state["partsReceived"] == []


async def test_connections_refused_or_evicted_at_the_cap_are_one_log_line_each(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    log.configure("info", "json", stream=out)
    monkeypatch.setattr(http_app, "MAX_CONNECTIONS", 3)
    uid = (await init(api, total=3))["uploadId"]
    await api.session.close()  # its pooled connection would count too
    port = int(api.url.rsplit(":", 1)[1])
    idle = await asyncio.open_connection("127.0.0.1", port)  # says nothing: evicted for the third part
    held: list[Slow] = []
    assert api.daemon.http is not None
    in_flight = api.daemon.http._app[http_app.IN_FLIGHT]
    try:
        for n in (1, 2, 3):
            held.append(await Slow.start(api, "PUT", f"/outbound/uploads/{uid}/parts/{n}", held_part(),
                                         key=ADMIN_KEY))
            for _ in range(100):  # bounded: ~5 s, until this part is being received
                if in_flight.total == n:
                    break
                await asyncio.sleep(0.05)
        assert await asyncio.wait_for(idle[0].read(), 5) == b""
        for _ in range(3):  # every connection is busy: these are closed at once
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        status, _, part = await held[0].finish()  # the parts in progress were never cut
        assert status == 200 and part["records"] == 20
    finally:
        idle[1].close()
        for slow in held:
            slow.close()
    entries: list[dict[str, Any]] = []
    for _ in range(100):  # bounded: ~5 s
        entries = [json.loads(line) for line in out.getvalue().splitlines()]
        if sum(e["event"] == "http.connection_refused" for e in entries) >= 3:
            break
        await asyncio.sleep(0.05)
    events = [e["event"] for e in entries]
    assert events.count("http.connection_evicted") == 1 and events.count("http.connection_refused") == 3, events
    assert not [e for e in entries if "exception" in e or e["level"] == "error"], entries
