"""The schedule on a PostgreSQL store, end to end: a real daemon judges expected arrivals across restarts and
sweeps by retention with its state in PostgreSQL, as it does with SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest

pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")

import psycopg

from feedd.intake import spool_dir
from feedd.model import RunStatus, iso
from tests.delivery.conftest import Receiver
from tests.helpers import eventually
from tests.http.conftest import Api
from tests.schedule.conftest import Clock, demo_key, host_key, receiver, start_feedd, stop
from tests.schedule.test_arrivals import judged, missed_events, plan, setup
from tests.schedule.test_retention import AGES, unfinished, upload

__all__ = ["demo_key", "host_key", "receiver", "start_feedd"]

Start = Callable[..., Awaitable[Api]]


def _store(dsn: str) -> str:
    return f'store: {{type: postgresql, dsn: "{dsn}"}}\n'


async def test_a_window_missed_while_down_is_reported_once_from_postgresql(
    pg_dsn: str, start_feedd: Start, receiver: Receiver
) -> None:
    due, grace = plan()
    clock = Clock(due - timedelta(seconds=1))
    given = setup(receiver, grace, notify=False)
    given["extra"] += _store(pg_dsn)
    api = await start_feedd(clock, **given)
    await eventually(lambda: api.daemon.store.arrival_state("demo-contacts"))  # type: ignore[union-attr]
    await stop(api)

    for minute in (0, 1):  # each restart finds one more window closed while it was down
        clock.now = due + timedelta(minutes=minute, seconds=grace + 0.1)
        api = await start_feedd(clock, **given)
        await eventually(partial(judged, api, due + timedelta(minutes=minute)))
        assert [e["expectedBy"] for e in await missed_events(api)] == [
            iso(due + timedelta(minutes=m)) for m in range(minute + 1)
        ]
        status, shown = await api.call("GET", "/pipelines/demo-contacts")
        assert status == 200
        assert [m["expectedBy"] for m in shown["arrivals"]["missed"]] == [
            iso(due + timedelta(minutes=m)) for m in reversed(range(minute + 1))
        ]
        await stop(api)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM arrivals_missed").fetchone() == (2,)


async def test_a_sweep_on_postgresql_removes_a_finished_runs_input_and_outputs_only(
    pg_dsn: str, start_feedd: Start
) -> None:
    api = await start_feedd(Clock(), extra=AGES + _store(pg_dsn))
    held, held_input, held_outputs = await unfinished(api, RunStatus.HELD)
    await asyncio.to_thread(upload, api.sftp_port, "inbox/staff.csv", b"email\na@example.com\nnot-an-email\n")

    async def swept() -> dict[str, Any] | None:
        status, page = await api.call("GET", "/runs?pipeline=demo-contacts&status=completed,delivered,failed")
        assert status == 200
        done = [r for r in page["data"] if r["source"]["name"] == "inbox/staff.csv"]
        return done[0] if done and done[0]["swept"] == {"input": True, "outputs": True} else None

    run = await eventually(swept)
    config = api.daemon.config
    assert not [p for p in spool_dir(config).iterdir() if p.name.startswith(run["runId"])]
    assert not (config.state_dir / "runs" / run["runId"]).exists()
    assert held_input.exists() and (held_outputs / "records.jsonl").exists()
    status, shown = await api.call("GET", f"/runs/{held.run_id}")
    assert status == 200 and shown["swept"] == {"input": False, "outputs": False}
    assert not (config.state_dir / "feedd.db").exists(), "the state went to SQLite"

