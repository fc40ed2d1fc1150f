"""Who may log in: argon2id passwords and authorized keys per connection, allowed IPs, bans per source IP,
and which connections not yet logged in are let in, kept, or closed.

Password hashes are verified in threads, at most two at a time, in arrival order, so a password spray
cannot starve the event loop that serves everyone else. An unknown user is verified against a dummy hash,
so timing does not tell which names exist. Every failure is logged with its source IP and the user name
escaped, in a fixed shape fail2ban can match.

Connections not yet logged in are handled as OpenSSH's MaxStartups does: above `STARTUPS.start` of them at
work, a new one is dropped with a probability that rises to 1 at `STARTUPS.full`. Only connections at
work count: one that has sent nothing, or that has made no progress for `IDLE_SECONDS`, is idle. Idle
ones cost nothing but a socket; they are closed at their deadline (the version line within
`VERSION_TIMEOUT`, the key exchange within `KEX_TIMEOUT`, the login within `login_grace`), and the
oldest idle one makes room when `MAX_PREAUTH` are open. A login waiting for a verify slot is at work.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncssh

from feedd import log
from feedd.config import Config, Connection
from feedd.config.values import BanConfig
from feedd.credentials import HASHER, MAX_PASSWORD_BYTES, verify_password
from feedd.model import utcnow
from feedd.store import Store

FAILURE_DELAY = 1.0  # seconds added to every failed password (OpenSSH and SFTPGo do the same)
VERSION_TIMEOUT = 5.0  # seconds from connect to the client's version line (clients send it at once)
KEX_TIMEOUT = 10.0  # ... to the end of the key exchange; the login itself then has until `login_grace`
IDLE_SECONDS = 2.0  # a connection in key exchange or auth that makes no progress this long is idle
MAX_PREAUTH = 512  # connections not logged in, idle ones included; above, the oldest idle one is closed
RECOUNT_SECONDS = 0.1  # how stale the count of connections at work may be when a new one comes
VERIFY_SLOTS = 2  # argon2 verifies at a time: each takes a core for 20 to 40 ms
VERIFY_NICE = 10  # the verify threads' nice value: a burst of logins must not slow live transfers down


def _lower_priority() -> None:
    """In each verify thread: on Linux, nice is per thread, so argon2 yields the CPU to the event loop that
    moves everyone's bytes, and a burst of logins waits a little longer instead."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), VERIFY_NICE)


_VERIFY_THREADS = ThreadPoolExecutor(VERIFY_SLOTS, thread_name_prefix="feedd-verify", initializer=_lower_priority)


async def verify_queued(phc: str | None, password: str) -> bool:
    """A password checked in the verify threads (first come, first served, at most VERIFY_SLOTS at a time),
    against a dummy hash when there is none, so that timing does not tell whether the name exists. The
    console's logins come here too: they share the same few threads with SFTP's."""
    return await asyncio.get_running_loop().run_in_executor(_VERIFY_THREADS, verify_password, phc or _DUMMY_HASH,
                                                            password)


@dataclass(frozen=True, slots=True)
class Startups:
    """OpenSSH's MaxStartups `start:rate:full`, counting connections at work on a login."""

    start: int
    rate: float  # probability of a drop at `start`
    full: int  # at and above, every new connection is refused

    def drop_probability(self, at_work: int) -> float:
        if at_work < self.start:
            return 0.0
        if at_work >= self.full:
            return 1.0
        return self.rate + (1.0 - self.rate) * (at_work - self.start) / (self.full - self.start)


# OpenSSH's default is 10:30:100, sized for a process per connection. Here one not logged in costs a few
# KiB and a few ms of the loop for its key exchange, and its argon2 work is queued, so drops start later:
# a burst of 100 logins from one address gets in at the first try, and so do 200 partners arriving within
# seconds while the loop is busy with uploads (each takes longer to log in then, so more are at work).
STARTUPS = Startups(start=100, rate=0.3, full=200)
MAX_AUTH_TRIES = 6  # failed attempts on one connection before it is closed (OpenSSH's MaxAuthTries)
_DUMMY_HASH = HASHER.hash("feedd-dummy-password-for-unknown-users")


def escaped(text: str) -> str:
    """A user name as logs show it: control characters escaped, so `x\\nfrom 10.9.9.9` stays one line."""
    return text.encode("unicode_escape").decode("ascii")[:200]


class Bans:
    """Failed logins per source IP, and the bans they lead to, kept in the store so that on several nodes
    failures through any node count and a ban holds on all of them (and a restart keeps them). One
    instance serves SFTP logins and console logins alike, so failures of both count toward the same ban.
    Times are wall-clock: nodes' monotonic clocks are each their own.

    A new connection is checked against a copy of the bans in force (`is_banned`), which costs a dict
    lookup: it comes before anything else, once per connection, and a flood of connections is what bans
    are for. This node's own bans and unbans go into the copy at once; the other nodes' come with
    `refresh`, which the daemon calls every `sharing.SYNC_SECONDS`. A password login, which costs an
    argon2 verify anyway, asks the store itself (`check`), so a ban made on another node a moment ago
    holds there at once."""

    def __init__(self, policy: BanConfig, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self.policy = policy
        self._store = store
        self._clock = clock
        self._until: dict[str, datetime] = {}  # the bans in force as this node last knew them
        self._mark = 0  # the store's mark of the last change read

    def is_banned(self, ip: str, now: datetime | None = None) -> bool:
        until = self._until.get(ip)
        if until is None:
            return False
        if (now or self._clock()) >= until:
            del self._until[ip]
            return False
        return True

    async def check(self, ip: str, now: datetime | None = None) -> bool:
        """Whether `ip` is banned, as the store says now; the copy if the store cannot be reached."""
        now = now or self._clock()
        if self.is_banned(ip, now):
            return True
        try:
            until = await self._store.banned_until(ip, now)
        except Exception as exc:  # the store's errors are its driver's own: log in with the copy meanwhile
            log.get().error("bans.store_failed", ip=ip, error=str(exc))
            return False
        if until is not None:
            self._until[ip] = until
        return until is not None

    async def fail(self, ip: str, now: datetime | None = None) -> bool:
        """Record one failure; True when this one gets the IP banned."""
        now = now or self._clock()
        policy = self.policy
        try:
            until = await self._store.login_failed(ip, now, after=policy.after_failures, within=policy.within,
                                                   duration=policy.duration)
        except Exception as exc:
            log.get().error("bans.store_failed", ip=ip, error=str(exc))
            return False
        if until is None:
            return False
        self._until[ip] = until
        return True

    def banned(self, now: datetime | None = None) -> dict[str, float]:
        """The IPs banned now, with the seconds each has left."""
        now = now or self._clock()
        return {ip: (until - now).total_seconds() for ip, until in self._until.items() if until > now}

    async def unban(self, ip: str, now: datetime | None = None) -> bool:
        """Lift an IP's ban and forget its failures, on every node; True when it was banned."""
        self._until.pop(ip, None)
        return await self._store.unban(ip, now or self._clock())

    async def refresh(self) -> None:
        """Bring the copy up to date with the bans and unbans every node recorded since the last refresh."""
        changes, self._mark = await self._store.ban_changes(self._mark)
        now = self._clock()
        for ip, until in changes.items():
            if until is None or until <= now:
                self._until.pop(ip, None)
            else:
                self._until[ip] = until
        for ip in [ip for ip, until in self._until.items() if until <= now]:  # over: the copy stays small
            del self._until[ip]


class Phase(StrEnum):
    """Where a connection is on its way to a login."""

    SILENT = "silent"  # connected; the client's version line has not come
    KEX = "kex"  # version line in; key exchange under way
    AUTH = "auth"  # key exchange done; waiting for the client's next login request
    CHECKING = "checking"  # a login request queued for or in verification, or in its failure delay
    IN = "in"  # logged in


class AuthState:
    """What the auth code consults, swapped in place on reload (live sessions keep running)."""

    def __init__(self, config: Config, bans: Bans) -> None:
        self.config = config
        self.bans = bans
        self.pending: dict[Gate, None] = {}  # connections not logged in, oldest first
        self._count = 0  # of those at work, as of `_counted_at`
        self._counted_at = -RECOUNT_SECONDS
        # asyncio's Semaphore wakes its waiters in arrival order, so queued logins are served first come.
        self.verify_slots = asyncio.Semaphore(VERIFY_SLOTS)
        self.keys: dict[str, asyncssh.SSHAuthorizedKeys | None] = {}
        self.apply(config)

    def apply(self, config: Config) -> None:
        self.config = config
        self.bans.policy = config.sftp.ban
        keys: dict[str, asyncssh.SSHAuthorizedKeys | None] = {}
        for conn in config.connections.values():
            lines = list(conn.authorized_keys)
            if conn.authorized_keys_file is not None:
                try:
                    lines.append(conn.authorized_keys_file.read_text())
                except OSError as exc:
                    log.get(connection=conn.name).error("authorized keys file unreadable", error=str(exc))
            keys[conn.name] = asyncssh.import_authorized_keys("\n".join(lines)) if lines else None
        self.keys = keys

    def admit(self, gate: Gate) -> bool:
        """Whether a new connection may go on; may close the oldest idle one to make room."""
        now = time.monotonic()
        at_work = self._at_work(now)
        chance = STARTUPS.drop_probability(at_work)
        # Not a secret: the drop only has to be unpredictable enough that retrying clients spread out.
        if chance >= 1.0 or random.random() < chance:  # noqa: S311
            log.get().info("sftp.startups_dropped", ip=gate.ip, at_work=at_work, chance=round(chance, 2))
            return False
        if len(self.pending) >= MAX_PREAUTH:
            # Oldest first: the walk stops at the first idle one, past at most the few hundred at work.
            victim = next(((g, s) for g in self.pending if (s := g.idle_for(now)) is not None), None)
            if victim is None:
                log.get().warning("sftp.startups_dropped", ip=gate.ip, at_work=at_work, chance=1.0)
                return False
            log.get().warning("sftp.evicted_idle", ip=victim[0].ip, phase=str(victim[0].phase),
                              idle_seconds=round(victim[1], 1), for_ip=gate.ip)
            victim[0].close()
        self.pending[gate] = None
        return True

    def _at_work(self, now: float) -> int:
        """Connections at work on a login. Walking all of them for each new one would make a flood of new
        connections cost the loop dearly, so the count is taken afresh at most every `RECOUNT_SECONDS` (a
        new one is not at work before its version line anyway), and not at all below `STARTUPS.start`
        connections, where nothing is dropped."""
        if len(self.pending) < STARTUPS.start:
            return len(self.pending)
        if now - self._counted_at >= RECOUNT_SECONDS:
            self._count = sum(1 for g in self.pending if g.idle_for(now) is None)
            self._counted_at = now
        return self._count


def ip_allowed(conn: Connection, ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in conn.allowed_ips)


class Gate(asyncssh.SSHServer):
    """One per SSH connection: authenticates, and remembers who logged in from where."""

    def __init__(self, state: AuthState, on_close: Callable[[Gate], None]) -> None:
        self._state = state
        self._on_close = on_close
        self.conn: asyncssh.SSHServerConnection | None = None
        self.ip = "?"
        self.username: str | None = None
        self.authenticated = False
        self.connected_at = self.last_activity = time.monotonic()
        self._in_auth = False  # the key exchange is done: the client has sent a login request
        self._checks = 0  # login requests being checked (a cancelled one may still be winding down)
        self._failures = 0
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def phase(self) -> Phase:
        if self.authenticated:
            return Phase.IN
        if self._checks:
            return Phase.CHECKING
        if self._in_auth:
            return Phase.AUTH
        # asyncssh records the client's version line as it parses it; the key exchange starts right after,
        # and ends with the first login request (`begin_auth`).
        version = self.conn.get_extra_info("client_version") if self.conn is not None else None
        return Phase.SILENT if version is None else Phase.KEX

    def idle_for(self, now: float) -> float | None:
        """Seconds this connection has been idle, or None while it is at work on a login."""
        phase = self.phase
        if phase is Phase.SILENT:
            return now - self.connected_at  # a client sends its version line at once: silence is idle
        if phase is Phase.KEX:
            seconds = now - self.connected_at
        elif phase is Phase.AUTH:
            seconds = now - self.last_activity
        else:
            return None
        return seconds if seconds >= IDLE_SECONDS else None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        if self._state.bans.is_banned(self.ip):
            log.get().warning("sftp.refused_banned", ip=self.ip)
            conn.close()
            return
        if not self._state.admit(self):
            conn.close()
            return
        loop = asyncio.get_running_loop()
        self._timers = [loop.call_later(VERSION_TIMEOUT, self._deadline, Phase.SILENT, VERSION_TIMEOUT),
                        loop.call_later(KEX_TIMEOUT, self._deadline, Phase.KEX, KEX_TIMEOUT)]

    def _deadline(self, phase: Phase, seconds: float) -> None:
        """Close the connection if it is still in `phase` (or before it) when that phase's time is up."""
        current = self.phase
        if current is phase or (phase is Phase.KEX and current is Phase.SILENT):
            log.get().info("sftp.login_too_slow", ip=self.ip, phase=str(current), seconds=seconds)
            self.close()

    def close(self) -> None:
        self._forget()
        if self.conn is not None:
            self.conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self._on_close(self)

    def _forget(self) -> None:
        self._state.pending.pop(self, None)
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    def begin_auth(self, username: str) -> bool:
        self.username = username
        self._in_auth = True
        self.last_activity = time.monotonic()
        return True

    def auth_completed(self) -> None:
        self.authenticated = True
        self.last_activity = time.monotonic()
        self._forget()
        log.get(connection=self.username).info("sftp.login", ip=self.ip)

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def _usable(self, username: str) -> Connection | None:
        """The connection if this user may log in from this IP now, else None (the reason is logged)."""
        if self._state.bans.is_banned(self.ip):
            return None
        conn = self._state.config.connections.get(username)
        if conn is None:
            return None
        if not conn.enabled:
            log.get(connection=username).warning("sftp.auth_refused", reason="connection disabled", ip=self.ip)
            return None
        if not ip_allowed(conn, self.ip):
            log.get(connection=username).warning("sftp.auth_refused", reason="source IP not allowed", ip=self.ip)
            return None
        return conn

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Checked here rather than with asyncssh's set_authorized_keys, which would skip this hook on a
        # match and with it the per-connection rules (enabled, allowed IPs, bans).
        self.last_activity = time.monotonic()
        conn = self._usable(username)
        keys = self._state.keys.get(username)
        return conn is not None and keys is not None and keys.validate(key, self.ip, self.ip) is not None

    async def validate_password(self, username: str, password: str) -> bool:
        # At work from here until the answer, waiting for a verify slot included: never idle, never evicted.
        self._checks += 1
        try:
            return await self._check_password(username, password)
        finally:
            self._checks -= 1
            self.last_activity = time.monotonic()

    async def _check_password(self, username: str, password: str) -> bool:
        # The store's word, not only this node's copy: a ban another node made a moment ago holds here too.
        conn = None if await self._state.bans.check(self.ip) else self._usable(username)
        ok = False
        if len(password.encode("utf-8", "surrogateescape")) <= MAX_PASSWORD_BYTES:
            phc = conn.password_hash if conn is not None and conn.password_hash else _DUMMY_HASH
            async with self._state.verify_slots:
                ok = await asyncio.get_running_loop().run_in_executor(_VERIFY_THREADS, verify_password, phc, password)
            if ok:
                # Looked up again: a reload while this one waited may have disabled it or changed the password.
                current = self._usable(username)
                ok = current is not None and current.password_hash == phc
        if not ok:
            await self._failed(username, "password")
        return ok

    async def _failed(self, username: str, method: str) -> None:
        known = username in self._state.config.connections
        # The source IP comes before anything the client chose, so a filter anchored on it (fail2ban's
        # systemd/fail2ban-feedd.conf) can never be fooled by a user name like "x from 10.9.9.9".
        who = "user" if known else "unknown user"
        message = f"Failed {method} from {self.ip} for {who} '{escaped(username)}'"
        banned = await self._state.bans.fail(self.ip)
        self._failures += 1
        log.get().warning("sftp.auth_failed", message=message, user=escaped(username), ip=self.ip, method=method)
        if banned:
            log.get().warning("sftp.banned", ip=self.ip, seconds=self._state.config.sftp.ban.duration,
                              message=f"Banned {self.ip}")
        if (banned or self._failures >= MAX_AUTH_TRIES) and self.conn is not None:
            self.conn.close()
        await asyncio.sleep(FAILURE_DELAY)

    def touch(self) -> None:
        self.last_activity = time.monotonic()
