"""PostgresStore: the Store contract against a real PostgreSQL, plus what only it has (migrations under a lock,
two nodes racing for the same run)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")

import psycopg

from feedd.errors import ConflictError
from feedd.model import AuditAction, AuditEntry, ManagedObject, ObjectKind, RunStatus, utcnow
from feedd.store import SweptPart
from feedd.store import migrations as sqlite_migrations
from feedd.store.postgresql import PostgresStore, _kept, migrate
from feedd.store.postgresql_migrations import MIGRATIONS
from tests.helpers import eventually
from tests.store.contract import StoreContract, make_run


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = await PostgresStore.open(pg_dsn)
    yield s
    await s.close()


@pytest.fixture
async def twin(pg_dsn: str, store: PostgresStore) -> AsyncIterator[PostgresStore]:
    """A second store on the same database, as another node opens it."""
    s = await PostgresStore.open(pg_dsn)
    yield s
    await s.close()


class TestPostgresStore(StoreContract):
    pass


def test_the_schema_has_the_same_versions_as_sqlites() -> None:
    # One numbered step in both: a store method written for SQLite's version n finds its tables at n here too.
    assert [v for v, _ in MIGRATIONS] == [v for v, _ in sqlite_migrations.MIGRATIONS]


async def test_sweeps_find_the_partial_indexes_of_runs_kept(pg_dsn: str) -> None:
    # The sweep's filter must be the indexes' predicate as written, or the planner cannot use them.
    store = await PostgresStore.open(pg_dsn)
    await store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        for part, index in ((SweptPart.INPUT, "runs_input_kept"), (SweptPart.OUTPUTS, "runs_outputs_kept")):
            kept = _kept(part, "r.")  # a constant of the store's, no value in it
            plan = conn.execute(f"EXPLAIN SELECT run_id FROM runs r WHERE {kept} AND r.pipeline = 'p' "  # noqa: S608
                                "ORDER BY r.finished_at").fetchall()
            assert index in "\n".join(line for (line,) in plan), plan


async def test_nodes_starting_together_migrate_once(pg_dsn: str) -> None:
    # Five nodes at once: without the lock, all but one would fail creating tables that exist by then.
    outcomes = await asyncio.gather(*(migrate(pg_dsn) for _ in range(5)))
    latest = MIGRATIONS[-1][0]
    assert sorted(outcomes) == [(0, latest)] + [(latest, latest)] * 4
    store = await PostgresStore.open(pg_dsn)
    try:
        assert await store.schema_version() == latest
        run = make_run()
        await store.insert_run(run)
    finally:
        await store.close()
    again = await PostgresStore.open(pg_dsn)  # re-opening keeps what is there
    try:
        got = await again.get_run(run.run_id)
        assert got is not None and got.status is RunStatus.QUEUED
    finally:
        await again.close()


async def test_two_nodes_claiming_the_same_runs_each_get_a_share_never_the_same(pg_dsn: str) -> None:
    first, second = await PostgresStore.open(pg_dsn), await PostgresStore.open(pg_dsn)
    try:
        runs = [make_run(connection=f"c{i % 4}", sha=f"{i:064x}") for i in range(40)]
        for run in runs:
            await first.insert_run(run)

        async def claim(store: PostgresStore, node: str) -> list[str]:
            won = []
            for _ in range(100):  # bounded: each round claims at least one run until none is left
                heads = await store.queued_heads(3)
                if not heads:
                    break
                claims = [replace(r, status=RunStatus.PROCESSING, started_at=utcnow(), meta={"node": node})
                          for r in heads]
                results = await asyncio.gather(*(store.update_run(c, expect=RunStatus.QUEUED) for c in claims))
                won += [c.run_id for c, ok in zip(claims, results, strict=True) if ok]
            return won

        a, b = await asyncio.gather(claim(first, "a"), claim(second, "b"))
        assert not set(a) & set(b), "a run was claimed by both nodes"
        assert sorted(a + b) == sorted(r.run_id for r in runs)
        for run_id in a:
            got = await first.get_run(run_id)
            assert got is not None and got.status is RunStatus.PROCESSING and got.meta == {"node": "a"}
    finally:
        await first.close()
        await second.close()


async def test_a_call_cancelled_as_a_pooled_connection_comes_to_it_is_cancelled(pg_dsn: str) -> None:
    """Stopping a component cancels its store call; that cancel must not be lost when it lands just as
    the pool hands the waiting call a connection (the component would go on, and its stop wait forever)."""
    store = await PostgresStore.open(pg_dsn, pool_size=1)
    try:
        for _ in range(5):
            async with store._connection():  # the pool's only connection, held
                waiting = asyncio.create_task(store.get_run("nope"))
                await asyncio.sleep(0.05)
                assert not waiting.done()
            # the connection went to the waiting call as the block ended; it is cancelled before it runs
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert await store.get_run("nope") is None, "the connection came back to the pool"
    finally:
        await store.close()


async def test_two_nodes_changing_one_object_at_once_one_wins_and_one_audit_entry_says_so(pg_dsn: str) -> None:
    first, second = await PostgresStore.open(pg_dsn), await PostgresStore.open(pg_dsn)
    try:
        for round_ in range(10):  # the two writes meet in different orders from round to round
            name = f"acme{round_}"
            obj = ManagedObject(ObjectKind.CONNECTION, name, {"quota": "1GiB"})
            create = AuditEntry("ops", AuditAction.CREATE, "connection", name, None, obj.body)
            made = await asyncio.gather(first.save_object(obj, expect=None, audit=create),
                                        second.save_object(obj, expect=None, audit=create), return_exceptions=True)
            assert made.count(True) == 1 and sum(isinstance(m, ConflictError) for m in made) == 1, made
            writes = [(store, replace(obj, body={"quota": f"{n}GiB"}, version=2)) for n, store in ((2, first),
                                                                                                  (3, second))]
            won = await asyncio.gather(*(store.save_object(
                changed, expect=1, audit=AuditEntry("ops", AuditAction.UPDATE, "connection", name, obj.body,
                                                    changed.body)) for store, changed in writes))
            assert sorted(won) == [False, True]
            [stored] = [o for o in await second.managed_objects() if o.name == name]
            assert stored.version == 2 and stored.body == writes[won.index(True)][1].body
        entries, _ = await first.list_audit(limit=1000)
        assert [e.action for e in entries].count(AuditAction.UPDATE) == 10
        assert [e.action for e in entries].count(AuditAction.CREATE) == 10
    finally:
        await first.close()
        await second.close()


async def test_one_node_at_a_time_leads_and_another_takes_over_when_it_is_gone(store: PostgresStore,
                                                                                 pg_dsn: str) -> None:
    other = await PostgresStore.open(pg_dsn)
    try:
        assert await store.lead("scan")
        assert not await other.lead("scan")
        assert await store.lead("scan")  # asked again: still its own
        assert await other.lead("schedule")  # each kind of work has its own leader
        await store.close()  # the node dies: its session, and the lock with it, is gone (once the server sees it)
        assert await eventually(lambda: other.lead("scan"), 10, "the lock freed")
    finally:
        await other.close()


async def test_a_node_listening_is_woken_by_work_another_node_makes_ready(store: PostgresStore, pg_dsn: str) -> None:
    other = await PostgresStore.open(pg_dsn)
    woken: list[str] = []
    got = asyncio.Event()

    def wake(kind: str) -> None:
        woken.append(kind)
        got.set()

    listening = asyncio.ensure_future(other.listen(wake))
    try:
        for _ in range(50):  # LISTEN is in place once a notification sent after it arrives
            await store.insert_run(make_run())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got.wait(), 0.2)
            if got.is_set():
                break
        assert "runs" in woken
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await other.close()


async def test_the_upgrade_to_10_moves_open_uploads_parts_and_finds_each_contents_original(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a store at version 6, made by the feedd of then
        conn.execute("CREATE TABLE feedd_schema (version INTEGER NOT NULL, host_key TEXT)")
        conn.execute("INSERT INTO feedd_schema VALUES (6)")
        for version, sql in MIGRATIONS:
            if version <= 6:
                conn.execute(sql)
        conn.execute("INSERT INTO uploads (upload_id, kind, state, connection, pipeline, total_parts, parts, records, "
                     "meta, created_at, updated_at) VALUES ('U1', 'upload', 'uploading', 'acme', 'acme-out', 3, "
                     """'{"1": "e1", "3": "e3"}', 12, '{"output": "csv", "records": {"1": 5, "3": 7}}', """
                     "now(), now())")
        for run_id, duplicate_of in (("R2", None), ("R1", None), ("R3", "R1")):
            conn.execute("INSERT INTO runs (run_id, connection, direction, status, source_kind, source_name, "
                         "source_size, source_sha256, spool_path, duplicate_of, created_at) VALUES (%s, 'acme', "
                         "'inbound', 'queued', 'sftp', 'a.csv', 1, 'ab', '/s', %s, now())", (run_id, duplicate_of))
    store = await PostgresStore.open(pg_dsn)
    try:
        upload = await store.get_upload("U1")
        assert upload is not None and upload.parts == {1: "e1", 3: "e3"}
        assert upload.part_records == {1: 5, 3: 7} and upload.records == 12
        assert await store.originals({("acme", "ab")}) == {("acme", "ab"): "R1"}
    finally:
        await store.close()
