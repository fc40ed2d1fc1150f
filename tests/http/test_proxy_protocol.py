"""`http.proxy_protocol`: the side port behind HAProxy (`send-proxy`, v1; and `send-proxy-v2` with `http.tls`, the
header before the TLS handshake) answers, and sees the partner's address; a connection without the header is
closed. The daemon runs as `feedd serve` does, on its own event loop."""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import paramiko

from tests.haproxy import haproxy, needs_haproxy
from tests.helpers import DEMO_PASSWORD, MINIMAL, Daemon, write
from tests.http.test_tls import make_cert

pytestmark = needs_haproxy
PARTNER = "127.0.0.2"  # the client's address; HAProxy reaches feedd from 127.0.0.1


def start(daemons: list[Daemon], folder: Path, http: str) -> Daemon:
    text = MINIMAL.replace('http: {listen: "127.0.0.1:0"}', http)
    daemon = Daemon(write(folder, "feedd.yaml", text))
    daemons.append(daemon)
    return daemon


def bad_request(port: int, source: str, context: ssl.SSLContext | None = None) -> bytes:
    """Bytes aiohttp refuses before any route: feedd logs the refusal with the client's address."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    with context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock as conn:
        conn.sendall(b"NOT-HTTP\r\n\r\n")
        return conn.recv(100)


def test_plain_http_behind_haproxy_v1(daemons: list[Daemon], tmp_path: Path) -> None:
    daemon = start(daemons, tmp_path, 'http: {listen: "127.0.0.1:0", proxy_protocol: true}')
    port = daemon.http_port()
    with haproxy(tmp_path, port, "send-proxy") as front:
        conn = http.client.HTTPConnection("127.0.0.1", front, timeout=20, source_address=(PARTNER, 0))
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and b'"ok"' in response.read()
        conn.close()
        assert bad_request(front, PARTNER).startswith(b"HTTP/1.0 400")
        daemon.wait_log("http.bad_request", remote=PARTNER)
    # straight to the port, without the header: closed, unanswered
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # closed with the request unread: the kernel resets
            answer = b""
        assert answer == b""
    daemon.wait_log("proxy_protocol.refused", service="http", remote="127.0.0.1")
    assert all(e.get("remote") != "127.0.0.1" for e in daemon.lines if e.get("event") == "http.bad_request")


def test_tls_behind_haproxy_v2_header_before_the_handshake(daemons: list[Daemon], tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    daemon = start(daemons, tmp_path, f'http: {{listen: "127.0.0.1:0", proxy_protocol: true, '
                                      f'tls: {{cert: "{cert}", key: "{key}"}}}}')
    port = daemon.http_port()
    context = ssl.create_default_context(cafile=str(cert))
    with haproxy(tmp_path, port, "send-proxy-v2") as front:
        conn = http.client.HTTPSConnection("127.0.0.1", front, timeout=20, source_address=(PARTNER, 0),
                                           context=context)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and b'"ok"' in response.read()
        conn.close()
        assert bad_request(front, PARTNER, context).startswith(b"HTTP/1.0 400")
        daemon.wait_log("http.bad_request", remote=PARTNER)
    # a TLS client straight to the port: its hello is not a header; the handshake fails
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        context.wrap_socket(sock, server_hostname="127.0.0.1").close()
        raise AssertionError("a TLS handshake without the PROXY header went through")
    except (ssl.SSLError, OSError):
        pass
    finally:
        sock.close()
    daemon.wait_log("proxy_protocol.refused", service="http", remote="127.0.0.1")


def test_sftp_behind_haproxy_on_the_daemons_own_event_loop(daemons: list[Daemon], tmp_path: Path) -> None:
    """The SFTP side too, as `feedd serve` runs it (uvloop where installed): a login through HAProxy is logged
    with the partner's address."""
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}', 'sftp: {listen: "127.0.0.1:0", proxy_protocol: true}')
    daemon = Daemon(write(tmp_path, "feedd.yaml", text))
    daemons.append(daemon)
    port = int(daemon.wait_log("listening", service="sftp")["address"].rsplit(":", 1)[1])
    with haproxy(tmp_path, port, "send-proxy-v2") as front:
        sock = socket.create_connection(("127.0.0.1", front), timeout=20, source_address=(PARTNER, 0))
        transport = paramiko.Transport(sock)
        try:
            transport.connect(username="demo", password=DEMO_PASSWORD)
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None and "inbox" in sftp.listdir("/")
        finally:
            transport.close()
    daemon.wait_log("sftp.login", ip=PARTNER)
