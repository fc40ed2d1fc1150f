"""What one client may hold of the side port: requests in flight per API key and per source address (a
share of all slots kept for everyone else), and a minimum rate for request bodies.

A request over a cap is answered 429 with `Retry-After` at once, before its body is read. A body that
arrives slower than `MIN_BODY_RATE` (averaged over `RATE_WINDOW`, after `RATE_GRACE`) is cut with 408, so
a client that trickles bytes cannot hold a slot for the whole read deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from feedd.config import Config
from feedd.http.api import ApiError, ClientGone, Handler

PER_KEY = 16  # requests in flight for one API key
PER_ADDRESS = 32  # requests in flight from one source address
TOTAL = 256  # requests in flight on the whole port (as many as open connections)
RESERVED = 64  # of TOTAL, kept for keys and addresses that have nothing in flight
RETRY_AFTER = 1  # seconds, in the 429's Retry-After

MIN_BODY_RATE = 1024  # bytes per second a body must keep up, averaged over RATE_WINDOW
RATE_WINDOW = 10.0  # seconds
RATE_GRACE = 10.0  # seconds from the start of a body before the rate is checked
CHUNK = 256 * 1024


def key_name(request: web.Request, config: Config) -> str | None:
    """The name of the configured key in `Authorization`, or None (no key or not a valid one: those
    requests are refused with 401 by the routes, and count against their address only)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).hexdigest()
    found = None
    for key in config.http.api_keys:  # every key compared, in constant time, as authenticate() does
        if hmac.compare_digest(digest, key.key_sha256.lower()) and found is None:
            found = key.name
    return found


class InFlight:
    """Counts requests being handled, per key, per address and in all; `middleware` enforces the caps."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config  # the live one: keys change on reload
        self.keys: Counter[str] = Counter()
        self.addresses: Counter[str] = Counter()
        self.total = 0

    def _refusal(self, key: str | None, address: str) -> str | None:
        if key is not None and self.keys[key] >= PER_KEY:
            return f"this API key already has {PER_KEY} requests in progress"
        if self.addresses[address] >= PER_ADDRESS:
            return f"this address already has {PER_ADDRESS} requests in progress"
        holds = (key is not None and self.keys[key] > 0) or self.addresses[address] > 0
        if self.total >= TOTAL or (holds and self.total >= TOTAL - RESERVED):
            return "the server is busy with other clients' requests"
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = key_name(request, self._config())
        address = request.remote or "-"
        if (why := self._refusal(key, address)) is not None:
            raise ApiError(429, "too_many_requests", f"{why}; try again shortly",
                           {"Retry-After": str(RETRY_AFTER)})
        self.total += 1
        self.addresses[address] += 1
        if key is not None:
            self.keys[key] += 1
        try:
            return await handler(request)
        finally:
            self.total -= 1
            _drop(self.addresses, address)
            if key is not None:
                _drop(self.keys, key)


def _drop(counts: Counter[str], name: str) -> None:
    counts[name] -= 1
    if counts[name] <= 0:
        del counts[name]  # no entry left behind per address that came once


async def body_chunks(request: web.Request, deadline: float, size: int = CHUNK) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive. 408 when the whole body takes longer than `deadline` seconds or
    arrives slower than MIN_BODY_RATE over the last RATE_WINDOW (once RATE_GRACE has passed); ClientGone
    when the connection is lost (or cut) on the way."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: deque[tuple[float, int]] = deque([(start, 0)])  # (when, bytes so far), the last window's worth
    total = 0
    tick = max(0.01, min(1.0, RATE_WINDOW / 10))  # how often a stalled body is looked at
    while True:
        try:
            chunk: bytes | None = await asyncio.wait_for(request.content.read(size), tick)
        except TimeoutError:
            chunk = None
        except (ConnectionError, RuntimeError) as exc:
            # aiohttp raises RuntimeError("Connection closed.") once the connection is gone; any other is a bug
            if isinstance(exc, RuntimeError) and request.transport is not None \
                    and not request.transport.is_closing():
                raise
            raise ClientGone(f"{type(exc).__name__}: {exc}") from None
        now = loop.time()
        if chunk == b"":
            return
        if chunk:
            total += len(chunk)
            seen.append((now, total))
        while len(seen) > 1 and seen[1][0] <= now - RATE_WINDOW:
            seen.popleft()  # seen[0] stays: the last mark at or before the window's start
        if now - start > deadline:
            raise ApiError(408, "request_timeout", f"the body did not arrive within {deadline:.0f} s")
        if now - start >= RATE_GRACE:
            span = min(RATE_WINDOW, now - start)
            if total - seen[0][1] < MIN_BODY_RATE * span:
                raise ApiError(408, "request_timeout", f"the body arrived slower than {MIN_BODY_RATE} bytes/s "
                                                       f"over {span:.0f} s")
        if chunk:
            yield chunk
