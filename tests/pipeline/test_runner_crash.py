"""kill -9 during a long run: after a restart the run completes, with every row once in the output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import MINIMAL, Daemon, write

ROWS = 300_000


def run_state(db: Path) -> list[tuple[str, str, str]]:
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return conn.execute("SELECT run_id, status, meta FROM runs").fetchall()
        except sqlite3.OperationalError:  # the daemon is still creating its tables
            return []


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def wait_status(db: Path, statuses: set[str], within: float) -> list[tuple[str, str, str]]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = run_state(db)
        if state and all(s in statuses for _, s, _ in state):
            return state
        await asyncio.sleep(0.05)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        seen = conn.execute("SELECT run_id, status, error_code, error_message FROM runs").fetchall()
    raise AssertionError(f"no run reached {statuses} in {within}s: {seen}")


@pytest.mark.timeout(240)
async def test_kill_9_mid_run_then_restart_completes_once(tmp_path: Path, daemons: list[Daemon]) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    inbox = tmp_path / "var" / "spaces" / "demo" / "inbox"
    inbox.mkdir(parents=True)
    with open(inbox / "big.csv", "w") as f:
        f.write("email\n")
        for i in range(ROWS):
            f.write(f"user{i}@example.org\n")
    db = tmp_path / "var" / "feedd.db"
    first = Daemon(cfg)
    daemons.append(first)
    [(_, status, _)] = await wait_status(db, {"processing", "completed", "delivered"}, 90)
    assert status == "processing", "the run finished before it could be interrupted: make the file bigger"
    workers = children(first.proc.pid)
    assert workers, "the run is processed in a worker process"
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 1.5  # a parent-death signal is immediate; an orphan would work on for seconds
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "workers die with the daemon instead of working on as orphans"
    again = Daemon(cfg)
    daemons.append(again)
    [(_, status, meta)] = await wait_status(db, {"completed", "delivered"}, 120)
    records = Path(json.loads(meta)["records"])
    lines = records.read_text().splitlines()
    assert len(lines) == ROWS and len(set(lines)) == ROWS
    assert json.loads(lines[-1]) == {"email": f"user{ROWS - 1}@example.org"}
    assert status == "completed"
    await asyncio.to_thread(again.wait_log, "run.resumed", 5.0)
