"""Retention end to end: a real daemon sweeping with ages of a second removes a finished run's input, outputs
and the partner's old outbox files, says so on the run, and touches nothing of a run that has not ended."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import paramiko

from feedd.intake import spool_dir
from feedd.metrics import REGISTRY
from feedd.model import Delivery, Direction, Run, RunStatus, Source, SourceKind, new_id, utcnow
from tests.helpers import DEMO_PASSWORD, eventually
from tests.http.conftest import Api
from tests.schedule.conftest import Clock, outbox
from tests.sftp.logs import capture_logs

Start = Callable[..., Awaitable[Api]]
AGES = "retention: {inputs: 1s, outputs: 1s, outbox: 1s, sweep_every: 200ms}\n"


def reclaimed() -> float:
    return sum(
        REGISTRY.get_sample_value("feedd_retention_reclaimed_bytes_total", {"part": p}) or 0.0
        for p in ("inputs", "outputs", "outbox")
    )


async def unfinished(api: Api, status: RunStatus, pending: bool = False) -> tuple[Run, Path, Path]:
    """A run long finished by the clock but in `status` (completed: with a delivery still pending, not due
    for a day), with an input in the spool and outputs on disk."""
    config, store = api.daemon.config, api.daemon.store
    assert store is not None
    run_id = new_id()
    spooled = spool_dir(config) / f"{run_id}.demo.sftp.demo-contacts.x.csv"
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_text("email\nx@example.com\n")
    outputs = config.state_dir / "runs" / run_id
    outputs.mkdir(parents=True)
    (outputs / "records.jsonl").write_text("{}\n")
    source = Source(SourceKind.SFTP, "x.csv", 20, "0" * 64)
    run = Run(
        run_id,
        "demo-contacts",
        "demo",
        Direction.INBOUND,
        status,
        source,
        str(spooled),
        created_at=utcnow() - timedelta(days=3),
        finished_at=utcnow() - timedelta(days=2),
        meta={"records": str(outputs / "records.jsonl")},
        deliveries=(Delivery(run_id, "outbox", next_attempt_at=utcnow() + timedelta(days=1)),) if pending else (),
    )
    await store.insert_run(run)
    return run, spooled, outputs


async def test_a_sweep_removes_what_is_old_and_finished_and_nothing_else(
    start_feedd: Start
) -> None:
    # the log lines are read as logged, whatever an earlier test made of the output's configuration
    with capture_logs() as logs:
        api = await start_feedd(Clock(), extra=AGES)
        keep = [
            await unfinished(api, RunStatus.PROCESSING),
            await unfinished(api, RunStatus.HELD),
            await unfinished(api, RunStatus.NEEDS_REVIEW),
            await unfinished(api, RunStatus.COMPLETED, pending=True),
        ]
        before = reclaimed()
        box = outbox(api)
        assert sorted(p.name for p in box.iterdir()) == ["demo-contacts.spec.csv", "demo-contacts.spec.md"]

        await asyncio.to_thread(upload, api.sftp_port, "inbox/staff.csv", b"email\na@example.com\nnot-an-email\n")

        async def swept() -> dict[str, Any] | None:
            status, page = await api.call("GET", "/runs?pipeline=demo-contacts&status=completed,delivered,failed")
            assert status == 200
            done = [r for r in page["data"] if r["source"]["name"] == "inbox/staff.csv"]
            return done[0] if done and done[0]["swept"] == {"input": True, "outputs": True} else None

        run = await eventually(swept)
        assert run["counts"] == {"rows": 2, "valid": 1, "invalid": 1, "warned": 0}
        config = api.daemon.config

        async def files_gone() -> bool:
            # the run is marked swept first, then its files go: a crash between leaves files, never a claim
            spooled = [p for p in spool_dir(config).iterdir() if p.name.startswith(run["runId"])]
            return not spooled and not (config.state_dir / "runs" / run["runId"]).exists()

        await eventually(files_gone)
        for what in ("records", "rejects"):
            status, body = await api.call("GET", f"/runs/{run['runId']}/{what}")
            assert status == 410 and body["error"]["code"] == "swept", body
        status, body = await api.call("POST", f"/runs/{run['runId']}/retry", json={"reprocess": True})
        assert status == 409 and "retention" in body["error"]["message"]

        # the report and rejects the partner got are old too and go; the data specs stay
        await eventually(lambda: _names(box, {"demo-contacts.spec.csv", "demo-contacts.spec.md"}))
        space = api.daemon.spaces.get("demo")  # type: ignore[union-attr]
        assert space is not None
        # what the quota counts is what is on disk, once the sweep has given back what it removed
        await eventually(lambda: space.used == space.measure(), what="the quota's count is what is on disk")
        assert reclaimed() > before
        # one line per sweep, with counts and bytes: the sweep that took the run's input says so
        lines = [e for e in logs if e.get("event") == "retention.swept"]
        assert any(e["inputs"] == 1 and "outputs" in e and "outbox_bytes" in e for e in lines), lines

        for kept, spooled, outputs in keep:
            assert spooled.exists() and (outputs / "records.jsonl").exists(), kept.status
            status, shown = await api.call("GET", f"/runs/{kept.run_id}")
            assert status == 200 and shown["swept"] == {"input": False, "outputs": False}


async def test_a_pipeline_keeps_inputs_forever_over_the_top_level(start_feedd: Start) -> None:
    api = await start_feedd(Clock(), extra=AGES, pipeline_extra="retention: {inputs: null}")
    (outbox(api).parent / "inbox" / "staff.csv").write_text("email\na@example.com\n")

    async def outputs_swept() -> dict[str, Any] | None:
        _, page = await api.call("GET", "/runs?pipeline=demo-contacts")
        done = [r for r in page["data"] if r["swept"]["outputs"]]
        return done[0] if done else None

    run = await eventually(outputs_swept)
    assert run["swept"] == {"input": False, "outputs": True}
    assert [p for p in spool_dir(api.daemon.config).iterdir() if p.name.startswith(run["runId"])]
    # its input is still there: processing it again makes outputs again, and the run no longer says they went
    status, again = await api.call("POST", f"/runs/{run['runId']}/retry", json={"reprocess": True})
    assert status == 200 and again["status"] == "queued", again
    assert again["swept"] == {"input": False, "outputs": False}


def upload(port: int, name: str, data: bytes) -> None:
    """Over SFTP, as a partner does (so that the space's byte count sees the file come and go)."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username="demo", password=DEMO_PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open(name, "wb") as f:
            f.write(data)
    finally:
        transport.close()


async def _names(folder: Path, want: set[str]) -> bool:
    return {e.name for e in os.scandir(folder)} == want
