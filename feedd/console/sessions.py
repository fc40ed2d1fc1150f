"""Console sessions: who is logged in, until when, and the CSRF token each session's forms carry.

Sessions are kept in the store, so that a restart logs no one out and every node of a shared PostgreSQL
store knows a session made on any of them. A session token is 256 random bits in an HttpOnly,
SameSite=Strict cookie. The store keeps only the token's SHA-256: whoever reads the table (or a backup of
it) learns no token that would let them act as an operator. The CSRF token is not stored either: it is an
HMAC of the session token, so the pages' forms carry a value only the cookie's holder can know, and there is
no store secret to keep or share between nodes.

Every check reads the store (one lookup by primary key, no cache in between): a logout or an expiry takes
effect at once on every node. A session also records which password it was opened with (`password_tag`, a
digest of the operator's password hash): a reload that changes that password ends the operator's sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from feedd.config.values import Operator
from feedd.model import utcnow
from feedd.store import OperatorSession, Store

COOKIE = "feedd_session"
LOGIN_COOKIE = "feedd_login"  # the login form's CSRF token, before there is a session (double submit)
_CSRF_LABEL = b"feedd console csrf"


@dataclass(frozen=True, slots=True)
class Session:
    operator: str
    role: str  # at login; what the operator may do is read from the config in force (Console._who)
    csrf: str
    expires_at: datetime
    password_tag: str

    def opened_by(self, operator: Operator) -> bool:
        """Whether `operator` (as the config says now) is the one who opened it, with the same password."""
        return operator.name == self.operator and hmac.compare_digest(password_tag(operator), self.password_tag)


def token_hash(token: str) -> str:
    """What the store knows a session by. A plain SHA-256 is enough: the token is 256 random bits."""
    return hashlib.sha256(token.encode()).hexdigest()


def password_tag(operator: Operator) -> str:
    return hashlib.sha256(operator.password_hash.encode()).hexdigest()[:16]


def csrf_of(token: str) -> str:
    return hmac.new(token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


class Sessions:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._clock = clock

    async def start(self, operator: Operator, ttl: float) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        stored = OperatorSession(token_hash(token), operator.name, str(operator.role), password_tag(operator), now,
                                 now + timedelta(seconds=ttl))
        # The table grows only here, so sweeping the expired sessions at each login keeps it to the live ones
        # (on SQLite both writes share one commit).
        await asyncio.gather(self._store.delete_expired_sessions(now), self._store.save_session(stored))
        return token, _session(token, stored)

    async def get(self, token: str | None) -> Session | None:
        """The live session of this token, or None (unknown, ended, or expired)."""
        if not token:
            return None
        stored = await self._store.get_session(token_hash(token), self._clock())
        return _session(token, stored) if stored is not None else None

    async def end(self, token: str | None) -> None:
        if token:
            await self._store.delete_session(token_hash(token))


def _session(token: str, stored: OperatorSession) -> Session:
    return Session(stored.operator, stored.role, csrf_of(token), stored.expires_at, stored.password_tag)


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
