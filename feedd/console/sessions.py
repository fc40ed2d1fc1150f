"""Console sessions: who is logged in, until when, and the CSRF token each session's forms carry.

Sessions live in memory: a restart logs every operator out, which is the safe side for a daemon whose
sessions last hours at most. A session token is 256 random bits in an HttpOnly, SameSite=Strict cookie;
the CSRF token is a different random value, sent only inside the pages' forms.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "feedd_session"
LOGIN_COOKIE = "feedd_login"  # the login form's CSRF token, before there is a session (double submit)
MAX_SESSIONS = 10_000  # above, the oldest session ends


@dataclass(frozen=True, slots=True)
class Session:
    operator: str
    csrf: str
    expires_at: float  # time.monotonic()


class Sessions:
    def __init__(self) -> None:
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def start(self, operator: str, ttl: float) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(operator, secrets.token_urlsafe(32), time.monotonic() + ttl)
        self._by_token[token] = session
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of this token, or None (an expired one is forgotten)."""
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if time.monotonic() >= session.expires_at:
            del self._by_token[token]
            return None
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
