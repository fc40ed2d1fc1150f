"""SqliteStore: the Store contract, plus what only SQLite has (pragmas, migrations, durability)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from feedd.model import RunStatus
from feedd.store.migrations import MIGRATIONS
from feedd.store.sqlite import SqliteStore
from tests.store.contract import StoreContract, make_run


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "feedd.db")
    yield s
    await s.close()


@pytest.fixture
async def twin(tmp_path: Path, store: SqliteStore) -> AsyncIterator[SqliteStore]:
    """A second store on the same database, as another process would open it."""
    s = await SqliteStore.open(tmp_path / "feedd.db")
    yield s
    await s.close()


class TestSqliteStore(StoreContract):
    pass


async def test_pragmas_are_set_for_durability(store: SqliteStore) -> None:
    assert await store.pragma("journal_mode") == "wal"
    assert await store.pragma("synchronous") == 2  # FULL
    assert await store.pragma("foreign_keys") == 1
    assert await store.pragma("busy_timeout") == 5000


async def test_migrations_apply_once_and_record_the_version(tmp_path: Path) -> None:
    path = tmp_path / "feedd.db"
    first = await SqliteStore.open(path)
    run = make_run()
    await first.insert_run(run)
    await first.close()
    again = await SqliteStore.open(path)  # re-opening must not re-run migration 1 (tables exist)
    assert await again.schema_version() == MIGRATIONS[-1][0]
    got = await again.get_run(run.run_id)
    assert got is not None and got.status is RunStatus.QUEUED
    await again.close()


async def test_committed_run_is_visible_to_another_process_reader(tmp_path: Path) -> None:
    path = tmp_path / "feedd.db"
    s = await SqliteStore.open(path)
    run = make_run()
    await s.insert_run(run)
    # a plain sqlite3 reader (another connection) sees it: the write was committed, not just buffered
    with contextlib.closing(sqlite3.connect(path)) as other:
        assert other.execute("SELECT status FROM runs WHERE run_id = ?", (run.run_id,)).fetchone() == ("queued",)
    await s.close()


async def test_new_content_is_checked_against_its_own_runs_not_every_run_of_the_connection(
        store: SqliteStore) -> None:
    # Every new file of a connection asks whether its content came before. That must cost the same with
    # 3,000 runs as with none: SQLite counts the steps of its virtual machine for us, 100 at a time.
    runs = [make_run(sha=f"{i:064x}") for i in range(3000)]
    await asyncio.gather(*(store.insert_run(run) for run in runs))
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    await store._in_db(lambda conn: conn.set_progress_handler(step, 100))
    try:
        found = await store.originals({("acme", "f" * 64), ("acme", f"{17:064x}")})
    finally:
        await store._in_db(lambda conn: conn.set_progress_handler(None, 100))
    assert found == {("acme", f"{17:064x}"): runs[17].run_id}
    assert steps <= 2, f"{steps * 100}+ steps for two lookups: the lookup reads more than its content's runs"


async def test_the_upgrade_to_10_moves_open_uploads_parts_and_finds_each_contents_original(tmp_path: Path) -> None:
    path = tmp_path / "feedd.db"
    with contextlib.closing(sqlite3.connect(path)) as db:  # a store at version 6, made by the feedd of then
        for version, sql in MIGRATIONS:
            if version <= 6:
                db.executescript(sql)
        db.execute("PRAGMA user_version = 6")
        db.execute("INSERT INTO uploads (upload_id, kind, state, connection, pipeline, total_parts, parts, records, "
                   "meta, created_at, updated_at) VALUES ('U1', 'upload', 'uploading', 'acme', 'acme-out', 3, "
                   """'{"1": "e1", "3": "e3"}', 12, '{"output": "csv", "records": {"1": 5, "3": 7}}', """
                   "'2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')")
        for run_id, duplicate_of in (("R2", None), ("R1", None), ("R3", "R1")):
            db.execute("INSERT INTO runs (run_id, connection, direction, status, source_kind, source_name, "
                       "source_size, source_sha256, spool_path, duplicate_of, created_at) VALUES (?, 'acme', "
                       "'inbound', 'queued', 'sftp', 'a.csv', 1, 'ab', '/s', ?, '2026-01-01T00:00:00+00:00')",
                       (run_id, duplicate_of))
        db.commit()
    store = await SqliteStore.open(path)
    try:
        upload = await store.get_upload("U1")
        assert upload is not None and upload.parts == {1: "e1", 3: "e3"}
        assert upload.part_records == {1: 5, 3: 7} and upload.records == 12
        assert await store.originals({("acme", "ab")}) == {("acme", "ab"): "R1"}
    finally:
        await store.close()
