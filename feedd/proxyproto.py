"""The PROXY protocol (v1 text and v2 binary, as HAProxy sends them) on the SFTP and HTTP listeners: the header
parser, a listener that reads each connection's header within a deadline, and the hand-off of the connection to
the service's own protocol (asyncssh's or aiohttp's) with the partner's address in place of the balancer's.

Only used when `sftp.proxy_protocol` or `http.proxy_protocol` is on; with it off, the services listen as they
always did and nothing here is on the path. Headers are taken from any peer that can reach the port: keep it
reachable from the balancer only."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from feedd import log

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the whole v1 line with its CRLF, as the specification bounds it
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and transport, length
V2_MAX_LENGTH = 4096  # what may follow the fixed part: addresses and TLVs (HAProxy sends far less)
V1_MIN = len(b"PROXY UNKNOWN\r\n")  # the shortest header of either version: never read past it at first
HEADER_TIMEOUT = 10.0  # seconds a new connection has to send its whole header; a silent one is closed
TLS_HANDSHAKE_TIMEOUT = 30.0
MAX_PENDING = 256  # connections still sending their header; more are closed at once

PeerName = tuple[str, int] | tuple[str, int, int, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header: the connection is closed."""


class Command(StrEnum):
    PROXY = "proxy"  # relayed: the addresses are the partner's
    LOCAL = "local"  # the balancer's own connection (a health check): the socket's addresses stand


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    command: Command
    length: int  # bytes the header took on the wire; the connection's own data starts after them
    source: PeerName | None = None  # None: no address given (LOCAL, UNKNOWN, UNSPEC or UNIX)
    destination: PeerName | None = None


def parse(data: bytes) -> Header | int:
    """The header at the start of `data`, or how many more bytes may be read without reading past the header
    (at least 1). Raises ProxyProtocolError as soon as `data` cannot start a valid header."""
    if not data:
        return V1_MIN
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    raise ProxyProtocolError("the connection did not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> Header | int:
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise ProxyProtocolError("not a PROXY protocol v1 header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"PROXY protocol v1 header longer than {V1_MAX} bytes")
        if b"\n" in data or (b"\r" in data[:-1]):
            raise ProxyProtocolError("PROXY protocol v1 header with a stray line break")
        # the rest is at least the CRLF (or its LF, if the CR is in)
        return 1 if data.endswith(b"\r") else min(max(V1_MIN - len(data), 2), V1_MAX - len(data))
    try:
        line = data[len(V1_PREFIX):end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY protocol v1 header is not ASCII") from None
    fields = line.split(" ")
    if fields[0] == "UNKNOWN":  # the balancer does not know the addresses; whatever follows is ignored
        if not line.isprintable():
            raise ProxyProtocolError("PROXY protocol v1 header with control characters")
        return Header(1, Command.PROXY, end + 2)
    if len(fields) != 5 or fields[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("PROXY protocol v1 header is not 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if fields[0] == "TCP4" else 6
    source = _v1_address(fields[1], fields[3], version)
    destination = _v1_address(fields[2], fields[4], version)
    return Header(1, Command.PROXY, end + 2, source, destination)


def _v1_address(host: str, port: str, version: int) -> PeerName:
    if not (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535):
        raise ProxyProtocolError(f"PROXY protocol v1 header with a bad port {port[:8]!r}")
    if "%" in host:
        raise ProxyProtocolError("PROXY protocol v1 header with a scoped address")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyProtocolError(f"PROXY protocol v1 header with a bad address {host[:48]!r}") from None
    if addr.version != version:
        raise ProxyProtocolError(f"PROXY protocol v1 header: {host!r} is not an IPv{version} address")
    return _peer(addr, int(port))


def _peer(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> PeerName:
    """In the shape the socket's own `peername` has, so the services read either the same way."""
    return (str(addr), port) if addr.version == 4 else (str(addr), port, 0, 0)


_V2_ADDRESSES = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX: the address block's length


def _parse_v2(data: bytes) -> Header | int:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise ProxyProtocolError("not a PROXY protocol v2 header")
    if len(data) < V2_FIXED:
        return V2_FIXED - len(data)
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = int.from_bytes(data[14:16], "big")
    if version != 2:
        raise ProxyProtocolError(f"PROXY protocol v2 header with version {version}")
    if command not in (0x0, 0x1):
        raise ProxyProtocolError(f"PROXY protocol v2 header with an unknown command {command}")
    if family > 0x3 or transport > 0x2:
        raise ProxyProtocolError("PROXY protocol v2 header with an unknown address family or transport")
    if length > V2_MAX_LENGTH:
        raise ProxyProtocolError(f"PROXY protocol v2 header of {length} bytes (at most {V2_MAX_LENGTH})")
    needed = _V2_ADDRESSES.get(family, 0)
    if length < needed:
        raise ProxyProtocolError("PROXY protocol v2 header too short for its addresses")
    if len(data) < V2_FIXED + length:
        return V2_FIXED + length - len(data)
    total = V2_FIXED + length
    if command == 0x0:  # LOCAL: the balancer speaking for itself; addresses and TLVs are ignored
        return Header(2, Command.LOCAL, total)
    body = data[V2_FIXED:total]  # TLVs after the addresses are skipped: nothing here needs them
    if family == 0x1:
        source = _peer(ipaddress.IPv4Address(body[0:4]), int.from_bytes(body[8:10], "big"))
        destination = _peer(ipaddress.IPv4Address(body[4:8]), int.from_bytes(body[10:12], "big"))
        return Header(2, Command.PROXY, total, source, destination)
    if family == 0x2:
        source = _peer(ipaddress.IPv6Address(body[0:16]), int.from_bytes(body[32:34], "big"))
        destination = _peer(ipaddress.IPv6Address(body[16:32]), int.from_bytes(body[34:36], "big"))
        return Header(2, Command.PROXY, total, source, destination)
    return Header(2, Command.PROXY, total)  # UNSPEC or UNIX: no address to use


async def read_header(sock: socket.socket, seconds: float = HEADER_TIMEOUT) -> Header:
    """Read the header from the non-blocking `sock`, and not one byte more: what follows belongs to the
    service. Raises ProxyProtocolError (bad header, or the client closed), or TimeoutError after `seconds`."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(seconds):
        for _ in range(V2_FIXED + V2_MAX_LENGTH + 1):  # every read adds a byte at least
            got = parse(data)
            if isinstance(got, Header):
                return got
            want = got
            if data.startswith(V1_PREFIX[:1]) and want < V1_MAX - len(data):
                # v1 has no length: look ahead for its end rather than read a byte or two at a time
                try:
                    ahead = sock.recv(V1_MAX - len(data), socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    ahead = b""
                end = (data + ahead).find(b"\r\n", max(0, len(data) - 1))
                if end >= 0:
                    want = end + 2 - len(data)
            chunk = await loop.sock_recv(sock, want)
            if not chunk:
                raise ProxyProtocolError("the connection closed before its PROXY protocol header ended")
            data += chunk
    raise ProxyProtocolError("PROXY protocol header too long")  # not reached: parse() bounds it first


class _PeerTransport(asyncio.Transport):
    """The connection's transport, with `peername` the partner's address from the header."""

    def __init__(self, transport: Any, peer: Any) -> None:  # uvloop's transports are not asyncio.Transport
        super().__init__()
        self._transport: asyncio.Transport = transport
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return self._transport.get_extra_info(name, default)

    def write(self, data: Any) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class _Relabelled(asyncio.Protocol):
    """Passes everything to the service's protocol; only the transport it is given differs."""

    def __init__(self, inner: asyncio.Protocol, peer: Any) -> None:
        self._inner = inner
        self._peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(_PeerTransport(transport, self._peer))

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Listener:
    """Listens on one host and port (every address it resolves to), reads each new connection's PROXY header
    within HEADER_TIMEOUT and hands the connection to `protocol_factory`'s protocol, seeing the partner's
    address as its peer; TLS, if any, starts after the header. A connection with no valid header is closed.
    Shaped as an asyncio server (`sockets`, `close`, `wait_closed`) so asyncssh can take it as a listener."""

    def __init__(self, service: str, protocol_factory: Callable[[], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 100) -> None:
        self._service = service
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._backlog = backlog
        self.sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(self._backlog)
                sock.setblocking(False)
        except OSError:
            self._close_sockets()
            raise
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(listening)
            except OSError as exc:  # out of file descriptors, say: wait a little rather than spin
                log.get().warning("proxy_protocol.accept_failed", service=self._service, error=str(exc))
                await asyncio.sleep(0.5)
                continue
            if len(self._pending) >= MAX_PENDING:
                log.get().warning("proxy_protocol.refused", service=self._service, remote=_host(address),
                                  reason="too many connections still sending their header")
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._hand_off(conn, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _hand_off(self, conn: socket.socket, address: Any) -> None:
        try:
            header = await read_header(conn, HEADER_TIMEOUT)
        except (ProxyProtocolError, TimeoutError, OSError) as exc:
            reason = "no PROXY protocol header in time" if isinstance(exc, TimeoutError) else str(exc)
            log.get().info("proxy_protocol.refused", service=self._service, remote=_host(address), reason=reason)
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        peer = header.source if header.source is not None else address

        def protocol() -> asyncio.Protocol:
            return _Relabelled(self._factory(), peer)

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, conn, ssl=self._ssl,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self._ssl is not None else None)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.get().info("proxy_protocol.handoff_failed", service=self._service, remote=_host(peer), error=str(exc))
            conn.close()

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def close(self) -> None:
        """No new connections from here on; those still sending their header are closed."""
        for task in self._accepting + list(self._pending):
            task.cancel()
        self._close_sockets()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._pending, return_exceptions=True)

    def is_serving(self) -> bool:
        return any(not task.done() for task in self._accepting)


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else "?"
