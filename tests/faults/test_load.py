"""Load: many real clients at once, a flood of silent sockets, a password spray. Each test prints its
figures (`-s` shows them; RELIABILITY.md collects them)."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

from tests.helpers import DEMO_PASSWORD
from tests.sftp.conftest import Feedd, demo_key, host_key, start_feedd

__all__ = ["demo_key", "host_key", "start_feedd"]

CLIENTS = 200
SECONDS = 6.0
FILES_PER_CLIENT = 20  # bounds the work whatever the daemon's speed: at most 4,000 files

# The clients run in a process of their own, so that the lag measured in this one is the daemon's.
CLIENT_SCRIPT = """
import asyncio, json, sys, time
import asyncssh
port, key, clients, seconds, most = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
    int(sys.argv[5])
async def client(n, sent, errors):
    await asyncio.sleep(n * 0.015)  # ramp up over 3 s, from 50 source addresses (partners are many hosts)
    try:
        async with asyncssh.connect("127.0.0.1", port, username="demo", client_keys=[key], known_hosts=None,
                                    login_timeout=60, local_addr=(f"127.0.0.{2 + n % 50}", 0)) as conn, \
                conn.start_sftp_client() as sftp:
            end, i = time.monotonic() + seconds, 0
            while time.monotonic() < end and i < most:
                name = f"/inbox/c{n:03d}-{i:02d}.csv"
                async with sftp.open(name, "wb") as f:
                    await f.write(b"email\\nc%d-%d@example.org\\n" % (n, i))
                sent.append(name)
                i += 1
    except Exception as exc:
        errors.append(f"{n}: {type(exc).__name__}: {exc}")
async def main():
    sent, errors = [], []
    await asyncio.gather(*(client(n, sent, errors) for n in range(clients)))
    print(json.dumps({"sent": sent, "errors": errors}))
asyncio.run(main())
"""


async def lag_probe(stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        await asyncio.sleep(0.01)
        samples.append(time.monotonic() - t0 - 0.01)


async def test_200_clients_upload_at_once_and_nothing_is_lost(start_feedd: Callable[..., Any],
                                                              demo_key: tuple[Path, str]) -> None:
    # one partner from 50 hosts: the caps per partner are lifted
    feedd: Feedd = await start_feedd(
        sftp_extra="max_sessions_per_connection: 1000\n  max_connections_per_connection: 1000\n  min_free_space: 0")
    stop, lag = asyncio.Event(), []
    probe = asyncio.create_task(lag_probe(stop, lag))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT_SCRIPT, str(feedd.port),
                                                str(demo_key[0]), str(CLIENTS), str(SECONDS), str(FILES_PER_CLIENT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    result = json.loads(out or b"{}") if out else {"sent": [], "errors": [err.decode()[-2000:]]}
    sent = set(result["sent"])
    assert feedd.daemon.store is not None
    deadline = time.monotonic() + 30  # bounded: for the watcher and intake to take the last ones
    while time.monotonic() < deadline:
        # a count, not the list: polling must not compete with intake for the store
        if sum((await feedd.daemon.store.status_counts())[0].values()) >= len(sent):
            break
        await asyncio.sleep(0.1)
    runs = await feedd.runs()
    stop.set()
    await probe
    taken = [r.source.name for r in runs]
    p99 = statistics.quantiles(lag, n=100)[98] * 1000 if len(lag) > 100 else max(lag, default=0) * 1000
    print(f"\nLOAD clients={CLIENTS} files={len(sent)} runs={len(runs)} errors={len(result['errors'])} "
          f"lost={len(sent - {'/' + t for t in taken})} duplicates={len(taken) - len(set(taken))} "
          f"loop_lag_p99_ms={p99:.1f} loop_lag_max_ms={max(lag) * 1000:.1f}")
    assert result["errors"] == []
    assert len(sent) >= CLIENTS  # every client uploaded at least one file
    assert sorted("/" + t for t in taken) == sorted(sent)  # each file taken once: none lost, none twice


async def test_silent_sockets_are_closed_at_login_grace_while_a_real_client_logs_in(
        start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(sftp_extra="login_grace: 2s")
    silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(300):  # from 127.0.0.2 .. 127.0.0.16: a flood from several sources
        sock = socket.socket()
        sock.bind((f"127.0.0.{2 + i % 15}", 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", feedd.port))
        silent.append(await asyncio.open_connection(sock=sock))
    started = time.monotonic()
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:  # from 127.0.0.1
        assert "inbox" in await sftp.listdir("/")
    login = time.monotonic() - started

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            await asyncio.wait_for(reader.read(), 10)
            return True
        except (TimeoutError, ConnectionError):
            return False

    results = await asyncio.gather(*(closed(r) for r, _ in silent))
    all_closed = time.monotonic() - started
    for _, w in silent:
        w.close()
    print(f"\nSILENT sockets=300 closed={sum(results)} real_login_s={login:.2f} all_closed_s={all_closed:.1f}")
    assert login < 5 and all(results) and all_closed < 12


async def test_a_password_spray_from_many_addresses_gets_banned(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd()  # ban after 3 failures within 1 minute, for 2 s
    banned_ips, tries = set(), 0
    for n in range(2, 7):  # five sources, each trying passwords until refused at the door
        ip = f"127.0.0.{n}"
        for attempt in range(6):
            tries += 1
            try:
                conn = await asyncio.wait_for(asyncssh.connect(
                    "127.0.0.1", feedd.port, username="demo", password=f"guess-{attempt}", known_hosts=None,
                    client_keys=None, local_addr=(ip, 0)), 20)
                conn.close()
                raise AssertionError("a guessed password got in")
            except asyncssh.PermissionDenied:
                continue
            except (asyncssh.DisconnectError, ConnectionError, OSError):
                banned_ips.add(ip)  # refused before authentication: banned
                break
    print(f"\nSPRAY sources=5 tries={tries} banned={len(banned_ips)}")
    assert len(banned_ips) == 5
    # the right password from a clean source still works
    async with await feedd.connect(password=DEMO_PASSWORD):
        pass
