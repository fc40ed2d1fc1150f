"""The SFTP server component: listeners, algorithms (from `sftp.algorithms`), sessions per connection, idle
timeout."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncssh

from feedd import log, metrics, proxyproto, supervisor
from feedd.config import Config
from feedd.config.algorithms import weak as weak_algorithms
from feedd.config.values import Address
from feedd.drops import Drops
from feedd.sftp import wire
from feedd.sftp.auth import AuthState, Bans, Gate
from feedd.sftp.files import Session, SpaceSFTPServer
from feedd.sftp.wire import MAX_PKTSIZE
from feedd.spaces import Spaces

# Client signatures accepted for public-key logins: no SHA-1 (`ssh-rsa`). The algorithms the server
# offers are `sftp.algorithms` (feedd.config.algorithms). Strict key exchange (the Terrapin
# countermeasure) is negotiated by asyncssh >= 2.14.2 on its own.
SIGNATURE_ALGS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                  "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]
KEEPALIVE_SECONDS = 30.0


class LoginGate(Gate):
    """A gate that lets a login in only while the partner has room for one more SSH connection: each one
    logged in is held until `idle_timeout`, so without a cap one partner could hold any number."""

    def __init__(self, state: AuthState, on_close: Callable[[Gate], None], admit: Callable[[Gate], str | None]) -> None:
        super().__init__(state, on_close)
        self._admit = admit

    def auth_completed(self) -> None:
        refused = self._admit(self)
        if refused is None:
            super().auth_completed()
            return
        log.get(connection=self.username).warning("sftp.too_many_connections", ip=self.ip)
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, refused)


class ProxiedListen:
    """With `sftp.proxy_protocol` on: what asyncssh takes as its `tunnel` (its hook for listening through
    something other than a plain TCP server): a listener that reads each connection's PROXY header, then
    starts asyncssh's server connection on it, the partner's address as its peer. asyncssh has no PROXY
    protocol support of its own."""

    async def create_server(self, session_factory: Callable[[str, int], asyncio.Protocol], host: str,
                            port: int) -> proxyproto.Listener:
        listener = proxyproto.Listener("sftp", lambda: session_factory(host, port))
        await listener.start(host, port)
        return listener


class SftpService:
    name = "sftp"

    def __init__(self, config: Config, spaces: Spaces, drops: Drops, host_keys: list[Path],
                 bans: Bans) -> None:
        self._config = config
        self._spaces = spaces
        self._drops = drops
        self._host_keys = [str(p) for p in host_keys]
        self._auth = AuthState(config, bans)
        self._servers: list[asyncssh.SSHAcceptor] = []
        self._gates: set[Gate] = set()
        self._sessions: Counter[str] = Counter()
        self._closing: set[asyncio.Task[None]] = set()  # one per counted session: gives its slot back
        self._idle_task: asyncio.Task[None] | None = None
        self.addresses: list[Address] = []

    async def start(self) -> None:
        wire.install(self._config.sftp.fast_path)
        algs = self._config.sftp.algorithms
        for weak in weak_algorithms(algs):
            log.get().warning("sftp.weak_algorithm", detail=weak)
        signs = {a.encode() for a in algs.host_key}
        keys = []
        for key in asyncssh.load_keypairs(self._host_keys):
            key.host_key_algorithms = [a for a in key.host_key_algorithms if a in signs]
            if key.host_key_algorithms:  # a key none of sftp.algorithms.host_key can sign with is not offered
                keys.append(key)
        if not keys:
            raise ValueError("no host key can sign with any of sftp.algorithms.host_key: "
                             f"{', '.join(algs.host_key)}")
        for addr in self._config.sftp.listen:
            server = await asyncssh.create_server(
                self._new_gate, addr.host, addr.port,
                server_host_keys=keys,
                sftp_factory=self._new_sftp,
                sftp_version=3,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_pty=False,
                line_editor=False,  # no shells here; the editor is a layer every SFTP reply went through
                login_timeout=self._config.sftp.login_grace,
                keepalive_interval=KEEPALIVE_SECONDS,
                kex_algs=list(algs.kex),
                encryption_algs=list(algs.ciphers),
                mac_algs=list(algs.macs),
                signature_algs=SIGNATURE_ALGS,
                server_version="feedd",
                max_pktsize=MAX_PKTSIZE,
                reuse_address=True,
                # off: asyncssh's own listener, nothing added on the path
                tunnel=ProxiedListen() if self._config.sftp.proxy_protocol else (),
            )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                self.addresses.append(Address(host, port))
        for bound in self.addresses:
            log.get().info("listening", service="sftp", address=str(bound))
        self._idle_task = supervisor.supervise("sftp.idle_close", self._close_idle)

    def _new_gate(self) -> Gate:
        gate = LoginGate(self._auth, self._gates.discard, self._admit)
        self._gates.add(gate)
        return gate

    def _admit(self, gate: Gate) -> str | None:
        """Why `gate`'s login may not go on (its partner has all the connections it may), or None."""
        name = gate.username
        limit = self._config.sftp.max_connections_per_connection
        logged_in = sum(1 for g in self._gates if g.authenticated and g.username == name and g is not gate)
        if logged_in >= limit:
            return f"too many connections logged in as {name} (at most {limit}); close one and try again"
        return None

    def _new_sftp(self, chan: asyncssh.SSHServerChannel[bytes]) -> SpaceSFTPServer:
        conn = chan.get_connection()
        gate = conn.get_owner()
        if not isinstance(gate, Gate) or gate.username is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not logged in")
        name = gate.username
        space = self._spaces.get(name)
        assert space is not None  # spaces are made for every connection before anyone can log in
        limit = self._config.sftp.max_sessions_per_connection
        if self._sessions[name] >= limit:
            # Refused before it is counted: the session ends at once (the client sees the subsystem close)
            # and has no slot to give back.
            log.get(connection=name).warning("sftp.too_many_sessions", limit=limit, ip=gate.ip)
            chan.close()
            return SpaceSFTPServer(chan, Session(space, self._drops, gate))
        self._sessions[name] += 1
        metrics.SFTP_SESSIONS.inc()
        released = False

        def release(task: object = None) -> None:
            nonlocal released
            if isinstance(task, asyncio.Task):
                self._closing.discard(task)
            if not released:
                released = True
                self._sessions[name] -= 1
                metrics.SFTP_SESSIONS.dec()

        # The slot is given back when the channel closes, however it closes (exit() is not always run:
        # a client that closes its session before the SFTP handshake skips it).
        closed = asyncio.get_running_loop().create_task(chan.wait_closed())
        self._closing.add(closed)
        closed.add_done_callback(release)
        return SpaceSFTPServer(chan, Session(space, self._drops, gate, release))

    @property
    def open_sessions(self) -> int:
        """SFTP sessions open now, across every connection (a stop waits for these to finish)."""
        return sum(self._sessions.values())

    def logins(self) -> list[tuple[str, str, float]]:
        """(connection, source IP, seconds since connect) of every logged-in SSH connection, for the console."""
        now = time.monotonic()
        return [(g.username, g.ip, now - g.connected_at) for g in self._gates
                if g.authenticated and g.username is not None]

    async def _close_idle(self) -> None:
        while True:
            timeout = self._config.sftp.idle_timeout
            await asyncio.sleep(min(10.0, max(0.05, timeout / 4)))
            now = time.monotonic()
            for gate in list(self._gates):
                if gate.authenticated and gate.conn is not None and now - gate.last_activity > timeout:
                    log.get(connection=gate.username).info("sftp.idle_closed", ip=gate.ip, idle_seconds=timeout)
                    gate.conn.close()

    async def reload(self, config: Config) -> None:
        for key in ("listen", "algorithms", "fast_path", "proxy_protocol"):
            if getattr(config.sftp, key) != getattr(self._config.sftp, key):
                log.get().warning(f"sftp.{key} changed: takes effect at the next restart")
        self._config = config
        self._auth.apply(config)
        # `enabled: false` (or a removed connection) ends its live sessions too, not only new logins.
        ended: Counter[tuple[str, str]] = Counter()
        for gate in list(self._gates):
            conn = config.connections.get(gate.username) if gate.username is not None else None
            if gate.authenticated and gate.username and gate.conn and (conn is None or not conn.enabled):
                ended[gate.username, "connection removed" if conn is None else "connection disabled"] += 1
                gate.conn.close()
        for (name, reason), count in ended.items():
            log.get(connection=name).warning("sftp.sessions_ended", count=count, reason=reason)

    async def stop(self, deadline: float) -> None:
        for server in self._servers:
            server.close()  # no new connections from here on
        loop = asyncio.get_running_loop()
        # Let uploads in flight finish while there is time; then close: what is left is a partial upload.
        while any(self._sessions.values()) and loop.time() < deadline - 5:  # noqa: ASYNC110 - counts change inside asyncssh
            await asyncio.sleep(0.1)
        for gate in list(self._gates):
            if gate.conn is not None:
                gate.conn.close()
        for server in self._servers:
            await server.wait_closed()
        if self._idle_task is not None:
            self._idle_task.cancel()

