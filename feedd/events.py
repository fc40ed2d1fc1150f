"""Webhook events (README, "Delivery and events"): what happened, for whom, and the sender that retries until a 2xx.

`make()` turns one happening into one queued `Event` per subscriber whose globs match its type; callers
hand them to the store in the same transaction as the change they describe, so a crash loses none.
`EventSender` POSTs due events, signed as Standard Webhooks (`webhook-id` stable across retries,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), with
backoff, jitter and `Retry-After`. `sign()` is shared with the webhook destination.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from feedd import log
from feedd.config import Config
from feedd.due import DueWork
from feedd.model import DeliveryStatus, Event, iso, new_id, utcnow
from feedd.store import Store

MAX_ATTEMPTS = 12
BACKOFF_BASE = 1.0  # seconds before the first retry; doubles each time, with jitter
BACKOFF_MAX = 3600.0
TIMEOUT = 10.0


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<signature>` for the `webhook-signature` header. A `whsec_` secret is base64 after the prefix;
    any other secret is used as its UTF-8 bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str | None, msg_id: str, body: bytes) -> dict[str, str]:
    now = int(time.time())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(now), "Content-Type": "application/json"}
    if secret:
        headers["webhook-signature"] = sign(secret, msg_id, now, body)
    return headers


def backoff(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next try: exponential with full jitter, at least what the server asked for."""
    delay = random.uniform(0.5, 1.0) * min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1))  # noqa: S311
    return float(max(delay, retry_after or 0.0))


def retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (delta form only; a date is rare from webhook receivers and is ignored)."""
    if value and value.strip().isdigit():
        return min(float(value.strip()), BACKOFF_MAX)
    return None


def redirect_error(url: str, status: int, location: str | None) -> str:
    """What a failed attempt says when the receiver answered a redirect (which is never followed)."""
    where = repr(location[:200]) if location else "nowhere (no Location header)"
    return f"{url} answered HTTP {status}, a redirect to {where}: redirects are not followed"


def make(config: Config, event_type: str, data: dict[str, Any] | Callable[[], dict[str, Any]]) -> list[Event]:
    """One queued event per subscriber of `event_type` (glob match on `events`), sharing one id. `data`
    may be a function, called only when someone subscribes (it runs for every file taken in)."""
    subscribers = [s for s in config.webhooks if any(fnmatch.fnmatchcase(event_type, g) for g in s.events)]
    if not subscribers:
        return []
    now = utcnow()
    payload = data() if callable(data) else data
    body = json.dumps({"type": event_type, "timestamp": iso(now), "data": payload}, separators=(",", ":"),
                      ensure_ascii=False, default=str)
    msg_id = f"msg_{new_id()}"
    return [Event(msg_id, s.url, event_type, body, created_at=now, next_attempt_at=now) for s in subscribers]


class EventSender(DueWork[Event]):
    """Sends due events; a component of the daemon. `wake()` after queueing makes it look at once."""

    name = "events"

    def __init__(self, config: Callable[[], Config], store: Store, owner: str | None = None) -> None:
        super().__init__(store, timeout=TIMEOUT, owner=owner)
        self._config = config

    async def due(self) -> list[tuple[Hashable, Event]]:
        return [((e.event_id, e.url), e) for e in await self._store.due_events(utcnow(), limit=100, owner=self.owner)]

    async def handle(self, event: Event) -> None:
        subscriber = next((s for s in self._config().webhooks if s.url == event.url), None)
        attempts = event.attempts + 1
        if subscriber is None:
            await self._store.save_event(_replace(event, DeliveryStatus.FAILED, attempts,
                                                  "the subscription is no longer in the config", None), self.owner)
            return
        error, wait, status = await self._post(event, subscriber.secret)
        if error is None:
            await self._store.save_event(_replace(event, DeliveryStatus.DELIVERED, attempts, None, None), self.owner)
            return
        # every failed attempt, at once: a receiver that is down shows in the log at its first refusal,
        # not after the hours the retries take
        log.get().warning("event.attempt_failed", event_id=event.event_id, url=event.url, type=event.type,
                          status=status, error=error, attempt=attempts, max_attempts=MAX_ATTEMPTS)
        if attempts >= MAX_ATTEMPTS:
            log.get().warning("event.failed", event_id=event.event_id, url=event.url, type=event.type,
                              attempts=attempts, error=error)
            await self._store.save_event(_replace(event, DeliveryStatus.FAILED, attempts, error, None), self.owner)
            return
        nxt = utcnow() + timedelta(seconds=backoff(attempts, wait))
        await self._store.save_event(_replace(event, DeliveryStatus.PENDING, attempts, error, nxt), self.owner)

    async def _post(self, event: Event, secret: str | None) -> tuple[str | None, float | None, int | None]:
        """(None, None, status) on a 2xx; else (what went wrong, Retry-After seconds or None, the HTTP status
        or None when there was no answer)."""
        assert self._session is not None
        body = event.body.encode()
        try:
            # Never followed: the event and its signature go only to the subscribed URL.
            async with self._session.post(event.url, data=body, allow_redirects=False,
                                          headers=signed_headers(secret, event.event_id, body)) as resp:
                if 200 <= resp.status < 300:
                    return None, None, resp.status
                if 300 <= resp.status < 400:
                    return redirect_error(event.url, resp.status, resp.headers.get("Location")), None, resp.status
                return f"HTTP {resp.status}", retry_after(resp.headers.get("Retry-After")), resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None, None


def _replace(event: Event, status: DeliveryStatus, attempts: int, error: str | None,
             nxt: datetime | None) -> Event:
    return replace(event, status=status, attempts=attempts, last_error=error, next_attempt_at=nxt)
