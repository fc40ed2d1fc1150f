"""Debian's HAProxy in TCP mode in front of a feedd port, sending the PROXY protocol header, as a load balancer
in front of several nodes would: run in the foreground with a config written here, stopped by the test."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (apt-get install haproxy)")

CONFIG = """\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # a node that refuses the connection (it died) is passed over for the next one
    option redispatch
    retries 3
frontend front
    bind 127.0.0.1:{port}
    default_backend feedd
backend feedd
    balance roundrobin
{servers}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def haproxy(folder: Path, target: int | Sequence[int], send: str = "send-proxy-v2") -> Iterator[int]:
    """HAProxy listening on 127.0.0.1 (the port yielded), forwarding to 127.0.0.1:`target` (or to each of
    several in turn, round robin) with `send`
    (`send-proxy` for v1, `send-proxy-v2` for v2). Clients bound to another 127.x address show that feedd
    sees the address in the header: HAProxy itself always connects from 127.0.0.1."""
    assert HAPROXY is not None
    for _ in range(5):  # the port is free when picked; another process may take it before HAProxy binds
        port = _free_port()
        config = folder / f"haproxy-{port}.cfg"
        targets = [target] if isinstance(target, int) else list(target)
        servers = "\n".join(f"    server node{i} 127.0.0.1:{t} {send}" for i, t in enumerate(targets, 1))
        config.write_text(CONFIG.format(port=port, servers=servers))
        errors = (folder / f"haproxy-{port}.err").open("w")
        proc = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=errors, stderr=errors)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        if proc.poll() is None:
            break
        errors.close()
    else:
        raise AssertionError(f"haproxy did not start: {(folder / f'haproxy-{port}.err').read_text()}")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        errors.close()
