"""kill -9 around an upload: an accepted file is never lost, a partial one is never taken."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import sqlite3
import time
from pathlib import Path

import asyncssh

from tests.helpers import DEMO_PASSWORD, MINIMAL, Daemon, write

CSV = b"email\n" + b"".join(f"p{i}@example.org\n".encode() for i in range(2000))


def runs_in(db: Path) -> list[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT source_name, status, source_sha256 FROM runs ORDER BY run_id").fetchall()


async def sftp_port(d: Daemon) -> int:
    entry = await asyncio.to_thread(d.wait_log, "listening", 30.0, service="sftp")
    return int(entry["address"].rsplit(":", 1)[1])


async def connect(port: int) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", port, username="demo", password=DEMO_PASSWORD, known_hosts=None,
                                  client_keys=None)


async def wait_for(predicate, seconds: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


async def test_kill_9_right_after_upload_then_restart_takes_the_file(tmp_path: Path, daemons: list[Daemon]) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    d = Daemon(cfg)
    daemons.append(d)
    port = await sftp_port(d)
    async with await connect(port) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/a.csv", "wb") as f:
            await f.write(CSV)
    d.proc.send_signal(signal.SIGKILL)  # inside the close grace: not yet taken
    d.wait()
    inbox_file = tmp_path / "var" / "spaces" / "demo" / "inbox" / "a.csv"
    db = tmp_path / "var" / "feedd.db"
    assert inbox_file.exists() and runs_in(db) == [], "killed inside the close grace: complete but not yet taken"
    again = Daemon(cfg)
    daemons.append(again)
    await sftp_port(again)
    assert await wait_for(lambda: len(runs_in(db)) == 1), runs_in(db)
    [(name, status, sha)] = runs_in(db)
    assert (name, sha) == ("inbox/a.csv", hashlib.sha256(CSV).hexdigest())
    assert status in ("queued", "processing", "completed", "delivered")
    assert not inbox_file.exists()


async def test_kill_9_mid_upload_leaves_a_partial_that_is_not_taken(tmp_path: Path, daemons: list[Daemon]) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}',
                                                        'sftp: {listen: "127.0.0.1:0", settle: 200ms}'))
    d = Daemon(cfg)
    daemons.append(d)
    port = await sftp_port(d)
    conn = await connect(port)
    sftp = await conn.start_sftp_client()
    f = await sftp.open("/inbox/half.csv", "wb")
    await f.write(CSV[: len(CSV) // 2])
    d.proc.send_signal(signal.SIGKILL)
    d.wait()
    conn.abort()
    again = Daemon(cfg)
    daemons.append(again)
    await sftp_port(again)
    await asyncio.sleep(2.0)  # several settle periods and the start-up scan
    db = tmp_path / "var" / "feedd.db"
    assert runs_in(db) == []
    assert (tmp_path / "var" / "spaces" / "demo" / "inbox" / "half.csv").stat().st_size == len(CSV) // 2
