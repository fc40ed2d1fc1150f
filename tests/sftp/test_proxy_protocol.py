"""`sftp.proxy_protocol`: behind HAProxy (`send-proxy-v2`), uploads work and logins, bans and `allowed_ips` see the
partner's address from the header, not the balancer's; a connection without the header is closed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from feedd import proxyproto
from tests.haproxy import haproxy, needs_haproxy
from tests.helpers import DEMO_PASSWORD
from tests.sftp.conftest import Feedd
from tests.sftp.logs import capture_logs, events, wait_for

pytestmark = needs_haproxy
PROXIED = "proxy_protocol: true"
PARTNER = "127.0.0.2"  # the client's address; HAProxy reaches feedd from 127.0.0.1


async def connect(port: int, source: str, password: str = DEMO_PASSWORD) -> asyncssh.SSHClientConnection:
    return await asyncio.wait_for(asyncssh.connect(
        "127.0.0.1", port, username="demo", password=password, known_hosts=None, client_keys=None,
        local_addr=(source, 0)), 20)


def paramiko_upload(port: int, source: str, name: str, data: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    try:
        transport.connect(username="demo", password=DEMO_PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open(f"/inbox/{name}", "wb") as f:
            f.write(data)
    finally:
        transport.close()


async def test_uploads_through_haproxy_are_recorded_with_the_partner_address(
        start_feedd: Callable[..., Any], tmp_path: Path) -> None:
    feedd: Feedd = await start_feedd(sftp_extra=PROXIED)
    with capture_logs() as logs, haproxy(tmp_path, feedd.port, "send-proxy-v2") as front:
        await asyncio.to_thread(paramiko_upload, front, PARTNER, "a.csv", b"email\na@example.com\n")
        async with await connect(front, PARTNER) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/inbox/b.csv", "wb") as f:
                await f.write(b"email\nb@example.com\n")
        runs = await feedd.wait_runs(2)
        assert sorted(r.source.name for r in runs) == ["inbox/a.csv", "inbox/b.csv"]
        logins = events(logs, "sftp.login")
        assert [e["ip"] for e in logins] == [PARTNER, PARTNER]


async def test_a_connection_without_the_header_is_closed(start_feedd: Callable[..., Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxyproto, "HEADER_TIMEOUT", 0.5)
    feedd: Feedd = await start_feedd(sftp_extra=PROXIED)
    with capture_logs() as logs:
        with pytest.raises((asyncssh.Error, OSError)):
            await connect(feedd.port, "127.0.0.1")  # a client sends its version line first: not a header
        await wait_for(lambda: any(e.get("remote") == "127.0.0.1" for e in events(logs, "proxy_protocol.refused")))
        # a client that sends nothing at all is closed once the header's time is up
        reader, writer = await asyncio.open_connection("127.0.0.1", feedd.port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(100), 20) == b""
        assert time.monotonic() - started >= 0.4
        writer.close()
        assert any("in time" in e["reason"] for e in events(logs, "proxy_protocol.refused"))
        assert not events(logs, "sftp.login")


async def test_a_ban_through_haproxy_holds_for_the_partner_only(start_feedd: Callable[..., Any],
                                                                tmp_path: Path) -> None:
    feedd: Feedd = await start_feedd(sftp_extra=PROXIED)  # ban: after 3 failures within 1m, for 2s
    with capture_logs() as logs, haproxy(tmp_path, feedd.port) as front:
        for _ in range(3):
            with pytest.raises((asyncssh.Error, OSError)):
                await connect(front, PARTNER, password="wrong")
        with pytest.raises((asyncssh.Error, OSError)):
            await connect(front, PARTNER)  # banned: the right password does not help
        assert [e["ip"] for e in events(logs, "sftp.refused_banned")] == [PARTNER]
        # everyone else comes through the same balancer, from the same socket address, and still logs in
        async with await connect(front, "127.0.0.1") as conn, conn.start_sftp_client() as sftp:
            assert "inbox" in await sftp.listdir("/")
        assert [e["ip"] for e in events(logs, "sftp.login")] == ["127.0.0.1"]


async def test_allowed_ips_see_the_partner_address(start_feedd: Callable[..., Any], tmp_path: Path) -> None:
    feedd: Feedd = await start_feedd(sftp_extra=PROXIED, demo_extra=f'allowed_ips: ["{PARTNER}/32"]')
    with haproxy(tmp_path, feedd.port) as front:
        with pytest.raises(asyncssh.PermissionDenied):
            await connect(front, "127.0.0.1")
        async with await connect(front, PARTNER) as conn, conn.start_sftp_client() as sftp:
            assert "inbox" in await sftp.listdir("/")


async def test_off_keeps_plain_connections_and_takes_no_header(start_feedd: Callable[..., Any],
                                                               tmp_path: Path) -> None:
    feedd: Feedd = await start_feedd()
    assert feedd.daemon.sftp is not None
    # asyncssh's own listener, as before the option existed: nothing of the PROXY protocol on the path
    assert not any(isinstance(s._server, proxyproto.Listener) for s in feedd.daemon.sftp._servers)
    async with await connect(feedd.port, PARTNER) as conn, conn.start_sftp_client() as sftp:
        assert "inbox" in await sftp.listdir("/")
    # a balancer sending headers to a port that does not expect them: SSH fails, nothing is trusted
    with haproxy(tmp_path, feedd.port) as front, pytest.raises((asyncssh.Error, OSError)):
        await connect(front, PARTNER)


async def test_headers_written_by_hand_ipv6_and_local(start_feedd: Callable[..., Any]) -> None:
    """A v1 TCP6 header gives an IPv6 partner address; a v2 LOCAL header (a balancer's own check) keeps the
    socket's address."""
    feedd: Feedd = await start_feedd(sftp_extra=PROXIED, demo_extra='allowed_ips: ["2001:db8::/32", "127.0.0.1/32"]')

    async def login_after(header: bytes) -> None:
        sock = socket.create_connection(("127.0.0.1", feedd.port), timeout=20)
        sock.sendall(header)
        sock.setblocking(False)
        async with await asyncio.wait_for(asyncssh.connect(
                sock=sock, username="demo", password=DEMO_PASSWORD, known_hosts=None, client_keys=None), 20):
            pass

    with capture_logs() as logs:
        await login_after(b"PROXY TCP6 2001:db8::5 2001:db8::1 40000 22\r\n")
        await login_after(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
        assert [e["ip"] for e in events(logs, "sftp.login")] == ["2001:db8::5", "127.0.0.1"]
        with pytest.raises(asyncssh.PermissionDenied):  # not in allowed_ips
            await login_after(b"PROXY TCP6 2001:db9::5 2001:db8::1 40000 22\r\n")
