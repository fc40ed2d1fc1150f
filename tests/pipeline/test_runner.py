"""Runs processed end to end in a real daemon: SFTP in, worker process, outputs, reports read back over SFTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.model import Run, RunStatus
from tests.helpers import write
from tests.sftp.conftest import Feedd, fetch_outbox, render

DONE = (RunStatus.COMPLETED, RunStatus.DELIVERED, RunStatus.FAILED)


async def upload(feedd: Feedd, path: str, data: bytes) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open(path, "wb") as f:
            await f.write(data)


async def finished(feedd: Feedd, count: int, within: float = 30.0,
                   until: tuple[RunStatus, ...] = DONE) -> list[Run]:
    """Wait for `count` runs, each in one of `until` (a run with destinations is `completed` for a
    moment before it is `delivered`)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        runs = await feedd.runs()
        if len(runs) >= count and all(r.status in until for r in runs):
            return runs
        await asyncio.sleep(0.1)
    raise AssertionError(f"runs not finished: {[(r.source.name, r.status) for r in await feedd.runs()]}")


async def test_a_drop_is_processed_delivered_and_reported(start_feedd: Callable[..., Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    feedd: Feedd = await start_feedd(workers=1, pipeline_extra=f"""destinations:
      - {{type: directory, path: "{out}"}}
      - {{type: outbox}}""")
    await upload(feedd, "/inbox/contacts.csv", b"email\nann@example.org\nnot-an-email\nbob@example.org\n")
    [run] = await finished(feedd, 1, until=(RunStatus.DELIVERED, RunStatus.FAILED))
    assert run.status is RunStatus.DELIVERED
    assert (run.counts.rows, run.counts.valid, run.counts.invalid) == (3, 2, 1)
    assert run.mapping == {"email": "email"}
    assert run.errors[0].row == 3 and run.errors[0].message == "email: 'not-an-email' is not an email address"
    assert [d.status for d in run.deliveries] == ["delivered", "delivered"]
    [delivered] = list(out.iterdir())
    assert delivered.name == f"contacts.{run.run_id}.jsonl"
    assert [json.loads(line) for line in delivered.read_text().splitlines()] == [
        {"email": "ann@example.org"}, {"email": "bob@example.org"}]

    files = await asyncio.to_thread(fetch_outbox, feedd.port)
    # beside the data spec feedd keeps for the feed (demo-contacts.spec.csv and .md)
    assert {n for n in files if ".spec." not in n} == {"contacts.csv.report.json", "contacts.csv.rejects.csv",
                                                        delivered.name}
    assert {n for n in files if ".spec." in n} == {"demo-contacts.spec.csv", "demo-contacts.spec.md"}
    report = json.loads(files["contacts.csv.report.json"])
    assert report["status"] == "completed" and report["counts"] == {"rows": 3, "valid": 2, "invalid": 1, "warned": 0}
    assert report["mapping"]["email"]["reason"] == "exact"
    assert files["contacts.csv.rejects.csv"].decode().splitlines() == [
        "email,_row,_errors", "not-an-email,3,email: 'not-an-email' is not an email address"]


async def test_a_run_without_destinations_stops_at_completed(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    await upload(feedd, "/inbox/a.csv", b"email\nann@example.org\n")
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.COMPLETED and run.deliveries == ()


async def test_mapping_memory_and_header_drift(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    await upload(feedd, "/inbox/one.csv", b"email,extra\nann@example.org,1\n")
    await finished(feedd, 1)
    await upload(feedd, "/inbox/two.csv", b"email\nbob@example.org\n")
    runs = await finished(feedd, 2)
    assert runs[0].meta["drift"] is None
    assert runs[1].meta["drift"] == {"added": [], "removed": ["extra"]}


async def test_an_unreadable_file_fails_with_a_clear_error(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    await upload(feedd, "/inbox/blob.csv", bytes(range(256)) * 64)
    [run] = await finished(feedd, 1)
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.code == "unreadable_input" and run.error.message.startswith("inbox/blob.csv: ")


async def test_sftp_stays_responsive_while_a_big_file_is_processed(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    big = b"email\n" + b"".join(b"user%d@example.org\n" % i for i in range(1_500_000))
    await upload(feedd, "/inbox/big.csv", big)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = await feedd.runs()
        if runs and runs[0].status is RunStatus.PROCESSING:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the big run never started processing")
    await upload(feedd, "/inbox/small.csv", b"email\nann@example.org\n")  # connect, log in, write, close
    # Had the processing held the loop, the upload could only have finished after it.
    big_run = next(r for r in await feedd.runs() if r.source.name.endswith("big.csv"))
    assert big_run.status is RunStatus.PROCESSING, "the small upload waited for the big run"
    runs = await finished(feedd, 2, within=60)
    assert {r.source.name.rsplit("/", 1)[-1]: r.counts.valid for r in runs} == {"big.csv": 1_500_000, "small.csv": 1}


_READ_PY = str(Path(__file__).resolve().parents[2] / "feedd" / "pipeline" / "read.py")
_opened_by_reader: list[str] = []
_watching: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Files the readers open in this process (the daemon's): each one is input read off the workers."""
    if event != "open" or not _watching:
        return
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == _READ_PY:
            _opened_by_reader.append(str(args[0]))
            return
        frame = frame.f_back  # type: ignore[assignment]


async def test_the_daemon_reads_no_input_itself(start_feedd: Callable[..., Any]) -> None:
    """Headers (for the mapping memory) are read in a worker too: the daemon's event loop and threads
    never run the readers, whose work on a crafted file (format detection, archives) costs CPU and memory."""
    if not _watching:
        sys.addaudithook(_audit)  # audit hooks stay for the process's life: this one is off unless watching
    _opened_by_reader.clear()
    _watching.append(True)
    try:
        feedd: Feedd = await start_feedd(workers=1)
        await upload(feedd, "/inbox/one.csv", b"email;extra\nann@example.org;1\n")
        await finished(feedd, 1)
        await upload(feedd, "/inbox/two.csv", gzip.compress(b"email;extra\nbob@example.org;2\n"))
        runs = await finished(feedd, 2)
    finally:
        _watching.clear()
    assert [r.status for r in runs] == [RunStatus.COMPLETED, RunStatus.COMPLETED]
    assert runs[1].meta["mapping_reasons"]["email"]["reason"] == "remembered", "the same headers: remembered"
    assert _opened_by_reader == [], "the daemon process opened inputs with the readers"


async def test_one_connections_backlog_does_not_hold_every_worker(tmp_path: Path, demo_key: tuple[Path, str],
                                                                 host_key: Path) -> None:
    """With 2 workers, `demo` queues five large files, then `acme` one: acme's run starts before demo's
    queue is drained (claiming goes to the connection holding the fewest workers)."""
    active = render(demo_key[1], str(host_key))
    paused = active
    for match in ('    match: ["inbox/*.csv"]\n', '    match: ["inbox/*.csv", "inbox/**/*.csv"]\n'):
        assert active.count(match) == 1
        paused = paused.replace(match, match + "    active: false\n")
    path = write(tmp_path, "feedd.yaml", paused)
    daemon = Daemon(load_config(path, env={}), drain_seconds=2, workers=2)
    await daemon.start()
    try:
        feedd = Feedd(daemon, tmp_path, demo_key[0], path)
        big = b"email\n" + b"".join(b"user%d@example.org\n" % i for i in range(60_000))
        for i in range(5):  # held while the pipelines are inactive: everything is queued at once below
            await upload(feedd, f"/inbox/big{i}.csv", big + b"x%d@example.org\n" % i)
        async with await feedd.connect(username="acme") as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/inbox/small.csv", "wb") as f:
                await f.write(b"email\nann@example.org\n")
        held = await feedd.wait_runs(6, statuses=(RunStatus.HELD,))
        assert len(held) == 6, [(r.connection, r.status) for r in await feedd.runs()]
        await feedd.reload(active)
        runs = await finished(feedd, 6, within=120)
    finally:
        await daemon.stop()
    assert all(r.status is RunStatus.COMPLETED for r in runs), [(r.source.name, r.status, r.error) for r in runs]
    order = [r.connection for r in sorted(runs, key=lambda r: (r.started_at, r.run_id))]
    assert order.index("acme") < 5, f"acme waited for demo's whole backlog: started in order {order}"
