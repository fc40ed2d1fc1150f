"""Who may log in: argon2id passwords and authorized keys per connection, allowed IPs, bans per source IP.

Password hashes are verified in threads, at most two at a time, so a password spray cannot starve the
event loop that serves everyone else. An unknown user is verified against a dummy hash, so timing
does not tell which names exist. Every failure is logged with its source IP and the user name escaped,
in a fixed shape fail2ban can match.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh

from feedd import log
from feedd.config import Config, Connection
from feedd.config.values import BanConfig
from feedd.credentials import HASHER, MAX_PASSWORD_BYTES, verify_password

FAILURE_DELAY = 1.0  # seconds added to every failed password (OpenSSH and SFTPGo do the same)
MAX_UNAUTHENTICATED = 100  # connections still in key exchange or auth, across all sources
MAX_UNAUTHENTICATED_PER_IP = 20  # ... and from one source address
MAX_AUTH_TRIES = 6  # failed attempts on one connection before it is closed (OpenSSH's MaxAuthTries)
_DUMMY_HASH = HASHER.hash("feedd-dummy-password-for-unknown-users")


def escaped(text: str) -> str:
    """A user name as logs show it: control characters escaped, so `x\\nfrom 10.9.9.9` stays one line."""
    return text.encode("unicode_escape").decode("ascii")[:200]


@dataclass(slots=True)
class Bans:
    """Failures per source IP within a window; after too many, the IP is refused for a while."""

    policy: BanConfig
    failures: dict[str, deque[float]] = field(default_factory=dict)
    banned_until: dict[str, float] = field(default_factory=dict)

    def is_banned(self, ip: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        until = self.banned_until.get(ip)
        if until is None:
            return False
        if now >= until:
            del self.banned_until[ip]
            return False
        return True

    def fail(self, ip: str, now: float | None = None) -> bool:
        """Record one failure; True when this one gets the IP banned."""
        now = time.monotonic() if now is None else now
        window = self.failures.setdefault(ip, deque())
        window.append(now)
        while window and window[0] < now - self.policy.within:
            window.popleft()
        if len(window) >= self.policy.after_failures:
            self.banned_until[ip] = now + self.policy.duration
            window.clear()
            return True
        return False


class AuthState:
    """What the auth code consults, swapped in place on reload (live sessions keep running)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bans = Bans(config.sftp.ban)
        # Connections not yet logged in, oldest first: when there are too many, the oldest makes room for
        # the newest (idle sockets cannot lock real clients out), within a cap per source address.
        self.waiting: dict[Gate, None] = {}
        self.verify_slots = asyncio.Semaphore(2)
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
        self.last_activity = time.monotonic()
        self._counted = False
        self._failures = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        if self._state.bans.is_banned(self.ip):
            log.get().warning("sftp.refused_banned", ip=self.ip)
            conn.close()
            return
        waiting = self._state.waiting
        if sum(1 for g in waiting if g.ip == self.ip) >= MAX_UNAUTHENTICATED_PER_IP:
            log.get().warning("sftp.refused_too_many_unauthenticated", ip=self.ip)
            conn.close()
            return
        if len(waiting) >= MAX_UNAUTHENTICATED:
            oldest = next(iter(waiting))
            log.get().warning("sftp.evicted_unauthenticated", ip=oldest.ip, for_ip=self.ip)
            oldest._uncount()
            if oldest.conn is not None:
                oldest.conn.close()
        waiting[self] = None
        self._counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        self._on_close(self)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._state.waiting.pop(self, None)

    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True

    def auth_completed(self) -> None:
        self.authenticated = True
        self.last_activity = time.monotonic()
        self._uncount()
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
        conn = self._usable(username)
        keys = self._state.keys.get(username)
        return conn is not None and keys is not None and keys.validate(key, self.ip, self.ip) is not None

    async def validate_password(self, username: str, password: str) -> bool:
        conn = self._usable(username)
        ok = False
        if len(password.encode("utf-8", "surrogateescape")) <= MAX_PASSWORD_BYTES:
            phc = conn.password_hash if conn is not None and conn.password_hash else _DUMMY_HASH
            async with self._state.verify_slots:
                ok = await asyncio.to_thread(verify_password, phc, password)
            ok = ok and conn is not None and conn.password_hash is not None
        if not ok:
            await self._failed(username, "password")
        return ok

    async def _failed(self, username: str, method: str) -> None:
        known = username in self._state.config.connections
        # The source IP comes before anything the client chose, so a filter anchored on it (fail2ban's
        # systemd/fail2ban-feedd.conf) can never be fooled by a user name like "x from 10.9.9.9".
        who = "user" if known else "unknown user"
        message = f"Failed {method} from {self.ip} for {who} '{escaped(username)}'"
        banned = self._state.bans.fail(self.ip)
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
