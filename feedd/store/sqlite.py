"""`SqliteStore`: the Store on one aiosqlite connection in WAL mode; each read or transaction is one call
on the database thread."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from feedd.errors import ConflictError, DuplicateContentError
from feedd.model import (
    ArrivalState,
    AuditEntry,
    Delivery,
    DeliveryStatus,
    Event,
    ManagedObject,
    Missed,
    Node,
    ObjectKind,
    Received,
    Run,
    RunStatus,
    TakenOver,
    Upload,
    UploadState,
    id_floor,
    utcnow,
)
from feedd.store import SWEEPABLE, OperatorSession, Remembered, RunQuery, Store, SweepQuery, SweptPart
from feedd.store.migrations import MIGRATIONS
from feedd.store.rows import BAN_ROWS_KEPT, Rows, failures_within, owner_of

_RUN_COLUMNS = (
    "run_id, pipeline, connection, direction, status, source_kind, source_name, source_size, source_sha256, "
    "spool_path, rows, valid, invalid, mapping, errors, error_code, error_message, duplicate_of, meta, "
    "created_at, started_at, finished_at, acknowledged_at"
)
_UPLOAD_COLUMNS = (
    'upload_id, kind, state, connection, pipeline, total_parts, parts, records, "offset", length, filename, '
    "run_id, meta, created_at, updated_at, expires_at, holder"
)

T = TypeVar("T")

_DELIVERY_COLUMNS = "run_id, destination, status, attempts, last_error, delivered_at, next_attempt_at"
_INSERT_DELIVERY = f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_UPSERT_DELIVERY_SELECT = f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?"
# A delivery written again (a run finished, an operator's retry) is nobody's until claimed afresh.
_ON_DELIVERY_CONFLICT = ("ON CONFLICT (run_id, destination) DO UPDATE SET status = excluded.status, "
                         "attempts = excluded.attempts, last_error = excluded.last_error, "
                         "delivered_at = excluded.delivered_at, next_attempt_at = excluded.next_attempt_at, "
                         "owner = NULL")

_INSERT_AUDIT_SELECT = "INSERT INTO audit SELECT ?, ?, ?, ?, ?, ?, ?"


# A SELECT, not VALUES, so that a run's update can make it conditional on the run having changed.
_UPSERT_MAPPING_SELECT = "INSERT INTO mapping_memory SELECT ?, ?, ?, ?"
_ON_MAPPING_CONFLICT = ("ON CONFLICT (connection, header_key) DO UPDATE SET mapping = excluded.mapping, "
                        "updated_at = excluded.updated_at")


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _utc_ts(value: datetime | None) -> str | None:
    """In UTC: how run times are written, so that the text of two times compares as the times do."""
    return None if value is None else value.astimezone(UTC).isoformat()


def _session_ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_ROWS = Rows(encode=_ts, decode=_dt)


_EVENT_COLUMNS = "event_id, url, type, body, status, attempts, last_error, next_attempt_at, created_at"
_INSERT_EVENT = f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
# An event queued already is kept as it is, but through an update to itself, not OR IGNORE: an ignored row
# counts no change, and changes() = 0 would then keep out the events after it and report the run unwritten.
_INSERT_EVENT_SELECT = f"INSERT INTO events ({_EVENT_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
_KEEP_EVENT = "ON CONFLICT (event_id, url) DO UPDATE SET event_id = events.event_id"


# A content's original: a run that is not a duplicate claims its (connection, sha256) in its insert, strictly
# when it must be the first (another's key fails the insert), else keeping the earliest run.
_ORIGINALS = "SELECT run_id FROM originals WHERE connection = ? AND sha256 = ?"
_CLAIM_ORIGINAL = "INSERT INTO originals VALUES (?, ?, ?)"
_KEEP_ORIGINAL = (f"{_CLAIM_ORIGINAL} ON CONFLICT (connection, sha256) DO UPDATE "
                  "SET run_id = min(run_id, excluded.run_id)")
_OPEN = (str(UploadState.INITIATED), str(UploadState.UPLOADING))

# The connections with queued runs, one index seek each on runs_queued (a partial index holding only
# queued runs), then the oldest of one of them: however many runs a connection queued, or ever had.
_QUEUED_CONNECTIONS = """
    WITH RECURSIVE names(name) AS (
        SELECT MIN(connection) FROM runs INDEXED BY runs_queued WHERE status = 'queued'
        UNION ALL
        SELECT (SELECT MIN(connection) FROM runs INDEXED BY runs_queued
                WHERE status = 'queued' AND connection > names.name)
        FROM names WHERE names.name IS NOT NULL
    )
    SELECT name FROM names WHERE name IS NOT NULL"""
_QUEUED_OF = ("SELECT run_id FROM runs INDEXED BY runs_queued WHERE status = 'queued' AND connection = ? "
              "ORDER BY run_id LIMIT ?")


class SqliteStore:
    """Open with `await SqliteStore.open(path)`; migrations run before it returns."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection, one thread: a transaction runs there in one call, so a reader never sees a
        # half-written change and SQLite never has to arbitrate between writers. The lock keeps one
        # commit in flight, so writes that arrive meanwhile gather for the next.
        self._lock = asyncio.Lock()
        # Group commit: writes that arrive while a commit is in progress share the next one (one fsync
        # for many runs when many files land at once), each inside its own savepoint.
        self._batch: list[tuple[tuple[tuple[str, tuple[Any, ...]], ...], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._overrides: dict[str, bool] | None = None  # read on every intake; changes only through us
        self._overrides_version = 0  # bumped by every switch, before and after its write

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000", "foreign_keys=ON"):
            await db.execute(f"PRAGMA {pragma}")
        store = cls(db)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, sql.split(";")):
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {version}")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version")
        return int(rows[0][0]) if rows else 0

    async def pragma(self, name: str) -> Any:
        rows = await self._read(f"PRAGMA {name}")
        return rows[0][0] if rows else None

    async def _in_db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the database's own thread: one hand-off however many statements it runs.

        Each statement through aiosqlite's public calls is a round trip between threads, and such trips
        cost more than the statements here; `_execute` is the queue those calls use themselves.
        """
        db = self._db
        execute: Callable[..., Awaitable[T]] = db._execute
        return await execute(fn, db._conn)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._db.execute_fetchall(sql, params))

    async def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> int:
        """Run statements atomically and durably; returns the last statement's rowcount."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._batch.append((statements, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._batch:
            async with self._lock:
                batch, self._batch = self._batch, []
                try:
                    groups = [statements for statements, _ in batch]
                    outcomes = await self._in_db(partial(_commit_batch, batch=groups))
                    results = list(zip((fut for _, fut in batch), outcomes, strict=True))
                except BaseException as exc:
                    results = [(fut, exc) for _, fut in batch]
            for fut, outcome in results:
                if fut.done():
                    continue
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    async def insert_run(self, run: Run, events: Sequence[Event] = (), *, first_of_content: bool = False) -> None:
        placeholders = ", ".join("?" * len(_RUN_COLUMNS.split(", ")))
        statements = [(f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({placeholders})", _ROWS.run_row(run))]
        if run.duplicate_of is None:
            statements.append((_CLAIM_ORIGINAL if first_of_content else _KEEP_ORIGINAL,
                               (run.connection, run.source.sha256, run.run_id)))
        statements += [(_INSERT_DELIVERY, _ROWS.delivery_row(d)) for d in run.deliveries]
        statements += [(_INSERT_EVENT, _ROWS.event_row(e)) for e in events]
        try:
            await self._write(*statements)
        except sqlite3.IntegrityError as exc:
            key = (run.connection, run.source.sha256)
            original = (await self.originals({key})).get(key) if first_of_content else None
            if original is not None and original != run.run_id:
                raise DuplicateContentError(f"run {original} has this content already", original) from exc
            raise ConflictError(f"run {run.run_id} already exists") from exc

    async def update_run(self, run: Run, *, expect: RunStatus | None = None, events: Sequence[Event] = (),
                         deliveries: Sequence[Delivery] = (), remember: Remembered | None = None,
                         owner: str | None = None, audit: AuditEntry | None = None) -> bool:
        row = _ROWS.run_row(run)
        columns = _RUN_COLUMNS.split(", ")
        sets = ", ".join(f"{c} = ?" for c in columns[1:])
        sql = f"UPDATE runs SET {sets}, owner = ? WHERE run_id = ?"
        params: tuple[Any, ...] = (*row[1:], owner_of(run, owner), run.run_id)
        if expect is not None:
            sql += " AND status = ?"
            params += (str(expect),)
        if owner is not None and expect is not RunStatus.QUEUED:
            sql += " AND owner = ?"
            params += (owner,)
        # Deliveries and events go in only if the run changed: changes() is the count of the statement
        # before, 1 after the update and after each insert that follows it, 0 all the way when it missed.
        statements = [(sql, params)]
        if remember is not None:
            statements.append((f"{_UPSERT_MAPPING_SELECT} WHERE changes() = 1 {_ON_MAPPING_CONFLICT}",
                               _ROWS.mapping_row(remember)))
        statements += [(f"{_UPSERT_DELIVERY_SELECT} WHERE changes() = 1 {_ON_DELIVERY_CONFLICT}",
                        _ROWS.delivery_row(d)) for d in deliveries]
        statements += [(f"{_INSERT_EVENT_SELECT} WHERE changes() = 1 {_KEEP_EVENT}", _ROWS.event_row(e))
                       for e in events]
        if audit is not None:
            statements.append((f"{_INSERT_AUDIT_SELECT} WHERE changes() = 1", _ROWS.audit_row(audit)))
        return await self._write(*statements) == 1

    async def add_events(self, events: Sequence[Event]) -> None:
        if events:
            await self._write(*((_INSERT_EVENT, _ROWS.event_row(e)) for e in events))

    async def save_event(self, event: Event, owner: str | None = None) -> bool:
        sql = ("UPDATE events SET status = ?, attempts = ?, last_error = ?, next_attempt_at = ?, owner = NULL "
               "WHERE event_id = ? AND url = ?")
        params: tuple[Any, ...] = (str(event.status), event.attempts, event.last_error, _ts(event.next_attempt_at),
                                   event.event_id, event.url)
        if owner is not None:
            sql, params = sql + " AND owner = ?", (*params, owner)
        return await self._write((sql, params)) == 1

    async def due_events(self, now: datetime, limit: int = 100, owner: str | None = None) -> list[Event]:
        return [_ROWS.event_from(r) for r in await self._due("events", "created_at", now, limit, owner)]

    async def events_of(self, event_type: str | None = None) -> list[Event]:
        sql = "SELECT * FROM events"
        params: tuple[str, ...] = ()
        if event_type is not None:
            sql, params = sql + " WHERE type = ?", (event_type,)
        return [_ROWS.event_from(r) for r in await self._read(sql + " ORDER BY created_at, rowid", params)]

    async def list_events(self, status: DeliveryStatus | None = None, limit: int = 100,
                          cursor: str | None = None) -> tuple[list[Event], str | None]:
        # The cursor is the rowid of the last event of the page: events share their id between subscribers.
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(str(status))
        if cursor is not None:
            clauses.append("rowid < ?")
            params.append(int(cursor))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = max(1, limit)
        rows = await self._read(f"SELECT rowid AS row_number, * FROM events {where} ORDER BY rowid DESC LIMIT ?",
                                (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return [_ROWS.event_from(r) for r in rows], (str(rows[-1]["row_number"]) if more else None)

    async def event_counts(self) -> dict[str, int]:
        return {row[0]: row[1] for row in await self._read("SELECT status, count(*) FROM events GROUP BY status")}

    async def due_deliveries(self, now: datetime, limit: int = 100, owner: str | None = None) -> list[Delivery]:
        return [_ROWS.delivery_from(r) for r in await self._due("deliveries", "next_attempt_at", now, limit, owner)]

    async def _due(self, table: str, order: str, now: datetime, limit: int, owner: str | None) -> list[Any]:
        """Pending rows of `table` (deliveries or events) whose next attempt has come; with `owner`, claimed
        for it in the same transaction."""
        due = (f"SELECT rowid FROM {table} WHERE status = 'pending' "
               "AND (next_attempt_at IS NULL OR next_attempt_at <= ?)")
        if owner is None:
            return await self._read(f"SELECT * FROM {table} WHERE rowid IN ({due}) ORDER BY {order}, rowid LIMIT ?",
                                    (_ts(now), limit))
        # Rows it holds already are read, not written again: the loop asks every 50 ms while it sends.
        held = f"SELECT rowid AS claimed, * FROM {table} WHERE rowid IN ({due} AND owner = ?) ORDER BY {order} LIMIT ?"
        claim = (f"UPDATE {table} SET owner = ? WHERE rowid IN ({due} AND owner IS NULL "
                 f"ORDER BY {order}, rowid LIMIT ?) RETURNING rowid AS claimed, *")

        def take(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = conn.execute(held, (_ts(now), owner, limit)).fetchall()
            # one statement (autocommit), so one transaction: the rows are picked and marked at once
            rows += conn.execute(claim, (owner, _ts(now), limit)).fetchall()
            return sorted(rows, key=lambda r: (r[order] is not None, r[order] or "", r["claimed"]))[:limit]

        return await self._in_db(take)

    async def next_due(self, owner: str | None = None) -> datetime | None:
        """The earliest `next_attempt_at` of any pending delivery or event (that no other node holds)."""
        mine = "" if owner is None else " AND (owner IS NULL OR owner = ?)"
        rows = await self._read(
            f"SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'{mine} "
            f"UNION ALL SELECT min(next_attempt_at) FROM events WHERE status = 'pending'{mine})",
            () if owner is None else (owner, owner))
        return _dt(rows[0][0]) if rows else None

    async def _select_runs(self, where: str, params: list[Any], tail: str) -> list[Run]:
        def select(conn: sqlite3.Connection) -> list[Run]:
            rows = conn.execute(f"SELECT * FROM runs {where} {tail}", params).fetchall()
            deliveries: dict[str, list[Delivery]] = {r["run_id"]: [] for r in rows}
            if rows:
                marks = ", ".join("?" * len(rows))
                for row in conn.execute(f"SELECT * FROM deliveries WHERE run_id IN ({marks}) ORDER BY rowid",
                                        list(deliveries)):
                    deliveries[row["run_id"]].append(_ROWS.delivery_from(row))
            return [_ROWS.run_from(r, tuple(deliveries[r["run_id"]])) for r in rows]

        return await self._in_db(select)

    async def get_run(self, run_id: str) -> Run | None:
        runs = await self._select_runs("WHERE run_id = ?", [run_id], "")
        return runs[0] if runs else None

    async def list_runs(self, query: RunQuery) -> tuple[list[Run], str | None]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("connection", query.connection), ("pipeline", query.pipeline)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.statuses:
            clauses.append(f"status IN ({', '.join('?' * len(query.statuses))})")
            params += [str(s) for s in query.statuses]
        if query.acknowledged is not None:
            clauses.append("acknowledged_at IS NOT NULL" if query.acknowledged else "acknowledged_at IS NULL")
        if query.delivery_failed is not None:
            clauses.append(("" if query.delivery_failed else "NOT ") + self._FAILED_DELIVERY)
        if query.connections is not None:
            names = sorted(query.connections)
            clauses.append(f"connection IN ({', '.join('?' * len(names))})" if names else "0")
            params += names
        if query.since_id is not None:
            clauses.append("run_id >= ?")
            params.append(query.since_id)
        if query.until_id is not None:
            clauses.append("run_id < ?")
            params.append(query.until_id)
        if query.name:
            clauses.append("instr(lower(source_name), ?) > 0")
            params.append(query.name.lower())
        if query.cursor is not None:
            clauses.append("run_id > ?" if query.oldest_first else "run_id < ?")
            params.append(query.cursor)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = max(1, query.limit)
        order = "ASC" if query.oldest_first else "DESC"
        runs = await self._select_runs(where, params, f"ORDER BY run_id {order} LIMIT {limit + 1}")
        more = len(runs) > limit
        runs = runs[:limit]
        return runs, (runs[-1].run_id if more else None)

    async def queued_heads(self, per_connection: int) -> list[Run]:
        def heads(conn: sqlite3.Connection) -> list[str]:
            ids: list[str] = []
            for (name,) in conn.execute(_QUEUED_CONNECTIONS).fetchall():
                ids += [row[0] for row in conn.execute(_QUEUED_OF, (name, max(1, per_connection)))]
            return ids

        ids = await self._in_db(heads)
        if not ids:
            return []
        return await self._select_runs(f"WHERE run_id IN ({', '.join('?' * len(ids))})", ids, "ORDER BY run_id")

    async def originals(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
        def lookup(conn: sqlite3.Connection) -> dict[tuple[str, str], str]:
            found = {}
            for key in keys:  # one primary key lookup each, all in one hand-off
                row = conn.execute(_ORIGINALS, key).fetchone()
                if row is not None:
                    found[key] = str(row[0])
            return found

        return await self._in_db(lookup) if keys else {}

    async def save_delivery(self, delivery: Delivery, owner: str | None = None) -> bool:
        if owner is None:
            return await self._write((f"{_INSERT_DELIVERY} {_ON_DELIVERY_CONFLICT}", _ROWS.delivery_row(delivery))) == 1
        row = _ROWS.delivery_row(delivery)
        return await self._write((
            "UPDATE deliveries SET status = ?, attempts = ?, last_error = ?, delivered_at = ?, next_attempt_at = ?, "
            "owner = NULL WHERE run_id = ? AND destination = ? AND owner = ?", (*row[2:], *row[:2], owner))) == 1

    async def save_upload(self, upload: Upload, *, expect: Upload | None = None) -> bool:
        row = _ROWS.upload_row(upload)
        columns = _UPLOAD_COLUMNS.split(", ")
        if expect is not None:
            sets = ", ".join(f"{c} = ?" for c in columns[1:])
            return await self._write((
                f'UPDATE uploads SET {sets} WHERE upload_id = ? AND state = ? AND "offset" = ? AND run_id IS ? '
                "AND holder IS ? AND updated_at = ?",
                (*row[1:], upload.upload_id, str(expect.state), expect.offset, expect.run_id, expect.holder,
                 _ts(expect.updated_at)),
            )) == 1
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        return await self._write((
            f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES ({', '.join('?' * len(row))}) "
            f"ON CONFLICT (upload_id) DO UPDATE SET {updates}",
            row,
        )) == 1

    async def _select_uploads(self, where: str, params: Sequence[Any]) -> list[Upload]:
        return await self._in_db(partial(_uploads, where=where, params=params))

    async def get_upload(self, upload_id: str) -> Upload | None:
        uploads = await self._select_uploads("WHERE upload_id = ?", (upload_id,))
        return uploads[0] if uploads else None

    async def stale_uploads(self, states: tuple[UploadState, ...], updated_before: datetime,
                            limit: int = 100) -> list[Upload]:
        marks = ", ".join("?" * len(states))
        return await self._select_uploads(f"WHERE state IN ({marks}) AND updated_at < ? ORDER BY updated_at LIMIT ?",
                                          (*(str(st) for st in states), _ts(updated_before), limit))

    async def save_part(self, upload_id: str, number: int, etag: str, records: int) -> bool:
        marks = ", ".join("?" * len(_OPEN))
        return await self._write(
            (f"UPDATE uploads SET state = ?, updated_at = ? WHERE upload_id = ? AND state IN ({marks}) "
             "AND run_id IS NULL", (str(UploadState.UPLOADING), _ts(utcnow()), upload_id, *_OPEN)),
            ("INSERT INTO upload_parts SELECT ?, ?, ?, ? WHERE changes() = 1 ON CONFLICT (upload_id, part_number) "
             "DO UPDATE SET etag = excluded.etag, records = excluded.records", (upload_id, number, etag, records)),
        ) == 1

    async def claim_upload(self, upload_id: str, holder: str, seconds: float) -> Upload | None:
        now = utcnow()
        claim = ("UPDATE uploads SET holder = ?, held_until = ? WHERE upload_id = ? "
                 "AND (holder IS NULL OR holder = ? OR held_until IS NULL OR held_until < ?)",
                 (holder, _utc_ts(now + timedelta(seconds=seconds)), upload_id, holder, _utc_ts(now)))

        def hold(conn: sqlite3.Connection) -> Upload | None:
            # Not synced before it returns (a hold is what a crash may lose: it ends its holder too), so a tus
            # PATCH pays for one fsync'd commit, its offset's, as before holds were kept in the store.
            conn.execute("PRAGMA synchronous=NORMAL")
            try:
                held = _commit_batch(conn, batch=[(claim,)])[0]
            finally:
                conn.execute("PRAGMA synchronous=FULL")
            if isinstance(held, BaseException):
                raise held
            found = _uploads(conn, where="WHERE upload_id = ?", params=(upload_id,)) if held == 1 else []
            return found[0] if found else None

        return await self._in_db(hold)

    async def release_uploads(self, holder_prefix: str) -> int:
        return await self._write(("UPDATE uploads SET holder = NULL, held_until = NULL "
                                  "WHERE holder IS NOT NULL AND substr(holder, 1, ?) = ?",
                                  (len(holder_prefix), holder_prefix)))

    async def disable_target(self, target: str, reason: str) -> None:
        await self._write(("INSERT INTO disabled_targets VALUES (?, ?, ?) ON CONFLICT (target) DO UPDATE SET "
                           "reason = excluded.reason, disabled_at = excluded.disabled_at",
                           (target, reason, _ts(utcnow()))))

    async def enable_target(self, target: str) -> None:
        await self._write(("DELETE FROM disabled_targets WHERE target = ?", (target,)))

    async def disabled_targets(self) -> dict[str, str]:
        return {row[0]: row[1] for row in await self._read("SELECT target, reason FROM disabled_targets")}

    async def status_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        def counts(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int]]:
            runs = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
            uploads = dict(conn.execute("SELECT state, count(*) FROM uploads GROUP BY state").fetchall())
            return runs, uploads

        return await self._in_db(counts)

    # The plans below are pinned with INDEXED BY: without statistics (no ANALYZE), SQLite's planner picked
    # whole-table scans for them, which made the console's overview take seconds at 100,000 runs.
    _BY_ID = "INDEXED BY sqlite_autoindex_runs_1"
    _FAILED_DELIVERY = ("EXISTS (SELECT 1 FROM deliveries d INDEXED BY sqlite_autoindex_deliveries_1 "
                        "WHERE d.run_id = runs.run_id AND d.status = 'failed')")

    async def run_counts(self, since_id: str) -> list[tuple[str, str, int]]:
        rows = await self._read(f"SELECT connection, status, count(*) FROM runs {self._BY_ID} WHERE run_id >= ? "
                                f"GROUP BY 1, 2", [since_id])
        return [(r[0], r[1], r[2]) for r in rows]

    async def runs_per_day(self, first_day: datetime, days: int,
                           connection: str | None = None) -> list[tuple[str, str, int]]:
        starts = [first_day + timedelta(days=i) for i in range(days + 1)]
        bounds = [id_floor(at) for at in starts]
        names = [at.strftime("%Y-%m-%d") for at in starts]

        def count(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            out: list[tuple[str, str, int]] = []
            if connection is not None:  # one partner's runs: a range of its index, each row read once
                counted: Counter[tuple[str, str]] = Counter()
                for row in conn.execute(
                        "SELECT run_id, status FROM runs INDEXED BY runs_by_connection "
                        "WHERE connection = ? AND run_id >= ? AND run_id < ?", [connection, bounds[0], bounds[-1]]):
                    counted[names[bisect.bisect_right(bounds, row[0]) - 1], row[1]] += 1
                return [(day, status, n) for (day, status), n in counted.items()]
            # Every partner's: counted inside the status index (no row read), one range per status and day.
            for status in RunStatus:
                for i in range(days):
                    n = conn.execute("SELECT count(*) FROM runs INDEXED BY runs_by_status "
                                     "WHERE status = ? AND run_id >= ? AND run_id < ?",
                                     [str(status), bounds[i], bounds[i + 1]]).fetchone()[0]
                    if n:
                        out.append((names[i], str(status), n))
            return out

        return await self._in_db(count)

    async def failing_deliveries(self, since_id: str) -> dict[str, int]:
        rows = await self._read(f"SELECT connection, count(*) FROM runs {self._BY_ID} WHERE run_id >= ? AND "
                                f"{self._FAILED_DELIVERY} GROUP BY connection", [since_id])
        return {r[0]: r[1] for r in rows}

    async def count_by_connection(self, status: RunStatus) -> dict[str, int]:
        rows = await self._read("SELECT connection, count(*) FROM runs WHERE status = ? GROUP BY connection",
                                [str(status)])
        return {r[0]: r[1] for r in rows}

    async def last_arrivals(self, connections: Collection[str]) -> dict[str, datetime]:
        def probe(conn: sqlite3.Connection) -> dict[str, datetime]:
            out: dict[str, datetime] = {}
            for name in connections:
                row = conn.execute("SELECT created_at FROM runs WHERE connection = ? ORDER BY run_id DESC LIMIT 1",
                                   [name]).fetchone()
                if row is not None and (at := _dt(row[0])) is not None:
                    out[name] = at
            return out

        return await self._in_db(probe)

    async def remember_mapping(self, connection: str, header_key: str, mapping: dict[str, str]) -> None:
        await self._write((f"{_UPSERT_MAPPING_SELECT} WHERE true {_ON_MAPPING_CONFLICT}",
                           _ROWS.mapping_row(Remembered(connection, header_key, mapping))))

    async def recall_mapping(self, connection: str, header_key: str) -> dict[str, str] | None:
        rows = await self._read("SELECT mapping FROM mapping_memory WHERE connection = ? AND header_key = ?",
                                (connection, header_key))
        return dict(json.loads(rows[0][0])) if rows else None

    async def managed_objects(self) -> list[ManagedObject]:
        rows = await self._read("SELECT * FROM managed_objects ORDER BY created_at, rowid")
        return [_ROWS.object_from(r) for r in rows]

    async def save_object(self, obj: ManagedObject, *, expect: int | None, audit: AuditEntry,
                          events: Sequence[Event] = ()) -> bool:
        body = json.dumps(obj.body)
        if expect is None:
            first: tuple[str, tuple[Any, ...]] = (
                "INSERT INTO managed_objects VALUES (?, ?, ?, ?, ?, ?)",
                (str(obj.kind), obj.name, body, obj.version, _ts(obj.created_at), _ts(obj.updated_at)))
        else:
            first = ("UPDATE managed_objects SET body = ?, version = ?, updated_at = ? "
                     "WHERE kind = ? AND name = ? AND version = ?",
                     (body, obj.version, _ts(obj.updated_at), str(obj.kind), obj.name, expect))
        try:
            return await self._write(first, *self._along(audit, events)) == 1
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"{obj.kind} {obj.name!r} already exists") from exc

    async def delete_object(self, kind: ObjectKind, name: str, *, expect: int, audit: AuditEntry,
                            events: Sequence[Event] = ()) -> bool:
        first = ("DELETE FROM managed_objects WHERE kind = ? AND name = ? AND version = ?", (str(kind), name, expect))
        return await self._write(first, *self._along(audit, events)) == 1

    @staticmethod
    def _along(audit: AuditEntry, events: Sequence[Event]) -> list[tuple[str, tuple[Any, ...]]]:
        """An object's audit entry and events, written only if the statement before them changed a row."""
        statements = [(f"{_INSERT_AUDIT_SELECT} WHERE changes() = 1", _ROWS.audit_row(audit))]
        statements += [(f"{_INSERT_EVENT_SELECT} WHERE changes() = 1 {_KEEP_EVENT}", _ROWS.event_row(e))
                       for e in events]
        return statements

    async def add_audit(self, entry: AuditEntry, events: Sequence[Event] = ()) -> None:
        await self._write((f"{_INSERT_AUDIT_SELECT} WHERE true", _ROWS.audit_row(entry)),
                          *((_INSERT_EVENT, _ROWS.event_row(e)) for e in events))

    async def list_audit(self, limit: int = 100, cursor: str | None = None) -> tuple[list[AuditEntry], str | None]:
        limit = max(1, limit)
        where, params = ("WHERE rowid < ?", (int(cursor),)) if cursor is not None else ("", ())
        rows = await self._read(f"SELECT rowid AS row_number, * FROM audit {where} ORDER BY rowid DESC LIMIT ?",
                                (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return [_ROWS.audit_from(r) for r in rows], (str(rows[-1]["row_number"]) if more else None)

    async def set_pipeline_active(self, pipeline: str, active: bool) -> None:
        self._overrides = None
        self._overrides_version += 1
        try:
            await self._write((
                "INSERT INTO pipeline_overrides VALUES (?, ?, ?) ON CONFLICT (pipeline) DO UPDATE SET "
                "active = excluded.active, updated_at = excluded.updated_at",
                (pipeline, int(active), _ts(utcnow())),
            ))
        finally:
            # Again once written: a read that ran while the write was on its way may have cached what was
            # there before it, and the version tells such a read not to cache at all.
            self._overrides = None
            self._overrides_version += 1

    async def pipeline_overrides(self) -> dict[str, bool]:
        if self._overrides is None:
            version = self._overrides_version
            rows = await self._read("SELECT pipeline, active FROM pipeline_overrides")
            overrides = {row[0]: bool(row[1]) for row in rows}
            if version == self._overrides_version:
                self._overrides = overrides
            return dict(overrides)
        return dict(self._overrides)

    async def arrival_state(self, pipeline: str, missed: int = 10) -> ArrivalState | None:
        def read(conn: sqlite3.Connection) -> ArrivalState | None:
            row = conn.execute("SELECT since, checked_until, expect FROM arrivals WHERE pipeline = ?",
                               (pipeline,)).fetchone()
            if row is None:
                return None
            rows = conn.execute("SELECT expected_by, opens, deadline, last_arrival_at, reported_at "
                                "FROM arrivals_missed WHERE pipeline = ? ORDER BY expected_by DESC LIMIT ?",
                                (pipeline, max(0, missed))).fetchall()
            return ArrivalState(since=_dt(row[0]) or utcnow(), checked_until=_dt(row[1]),
                                missed=tuple(_ROWS.missed(*r) for r in rows), expect=row[2])

        return await self._in_db(read)

    async def save_arrival_state(self, pipeline: str, since: datetime, checked_until: datetime | None,
                                 missed: Sequence[Missed] = (), events: Sequence[Event] = (),
                                 expect: str = "") -> None:
        statements: list[tuple[str, tuple[Any, ...]]] = [(
            "INSERT INTO arrivals VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline) DO UPDATE SET since = excluded.since, "
            "checked_until = excluded.checked_until, expect = excluded.expect, updated_at = excluded.updated_at",
            (pipeline, _utc_ts(since), _utc_ts(checked_until), expect, _ts(utcnow())))]
        statements += [("INSERT OR IGNORE INTO arrivals_missed VALUES (?, ?, ?, ?, ?, ?)",
                        (pipeline, _utc_ts(m.expected_by), _utc_ts(m.opens), _utc_ts(m.deadline),
                         _utc_ts(m.last_arrival_at), _utc_ts(m.reported_at))) for m in missed]
        statements += [(_INSERT_EVENT, _ROWS.event_row(e)) for e in events]
        await self._write(*statements)

    async def received(self, pipeline: str, after: datetime | None, until: datetime | None,
                       min_rows: int) -> list[Received]:
        # created_at is written in UTC by one format, so the text compares as the time does
        clauses, params = ["pipeline = ?"], [pipeline]
        if after is not None:
            clauses.append("created_at > ?")
            params.append(_utc_ts(after) or "")
        if until is not None:
            clauses.append("created_at <= ?")
            params.append(_utc_ts(until) or "")
        rows = await self._read(
            "SELECT status, (valid >= ? OR rows = 0) AS enough, count(*), max(created_at) FROM runs "
            f"INDEXED BY runs_by_pipeline_time WHERE {' AND '.join(clauses)} GROUP BY status, enough",
            (min_rows, *params))
        return [Received(r[0], bool(r[1]), int(r[2]), _dt(r[3]) or utcnow()) for r in rows]

    async def sweep_candidates(self, query: SweepQuery) -> list[Run]:
        part = "input" if query.part is SweptPart.INPUT else "outputs"
        due = []
        params: list[Any] = []
        if query.finished_before is not None:
            due.append("finished_at < ?")
            params.append(_utc_ts(query.finished_before))
        if query.acked_before is not None:
            due.append("acknowledged_at < ?")
            params.append(_utc_ts(query.acked_before))
        if not due:
            return []
        clauses = [f"json_extract(meta, '$.swept.{part}') IS NULL", f"({' OR '.join(due)})",
                   f"status IN ({', '.join('?' * len(SWEEPABLE))})",
                   "(status != 'completed' OR NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.run_id = runs.run_id "
                   "AND d.status = 'pending'))"]
        params += [str(s) for s in SWEEPABLE]
        if query.pipeline is not None:
            clauses.append("pipeline = ?")
            params.append(query.pipeline)
        else:
            names = sorted(query.others_than)
            clauses.append(f"(pipeline IS NULL OR pipeline NOT IN ({', '.join('?' * len(names))}))" if names
                           else "1")
            params += names
        return await self._select_runs(f"WHERE {' AND '.join(clauses)}", params,
                                       f"ORDER BY finished_at LIMIT {max(1, query.limit)}")

    async def mark_swept(self, run_id: str, part: SweptPart) -> bool:
        name = "input" if part is SweptPart.INPUT else "outputs"
        marks = ", ".join("?" * len(SWEEPABLE))
        return await self._write((
            f"UPDATE runs SET meta = json_set(meta, '$.swept.{name}', json('true')) "
            f"WHERE run_id = ? AND status IN ({marks})", (run_id, *(str(s) for s in SWEEPABLE)))) == 1

    async def join(self, node: Node) -> None:
        await self._write(("INSERT INTO nodes (node_id, started_at, heartbeat_at, info) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                           "info = excluded.info", _ROWS.node_row(node)))

    async def heartbeat(self, node_id: str, now: datetime) -> bool:
        return await self._write(("UPDATE nodes SET heartbeat_at = ? WHERE node_id = ?", (_ts(now), node_id))) == 1

    async def leave(self, node_id: str) -> TakenOver:
        return await self._transaction(lambda conn: _release(conn, node_id))

    async def take_over(self, dead_before: datetime, by: str) -> list[TakenOver]:
        def take(conn: sqlite3.Connection) -> list[TakenOver]:
            dead = [row[0] for row in conn.execute(
                "SELECT node_id FROM nodes WHERE heartbeat_at < ? AND node_id != ? ORDER BY node_id",
                (_ts(dead_before), by))]
            taken = [_release(conn, node_id) for node_id in dead]
            orphans = _release(conn, None)
            return taken + ([orphans] if orphans.runs or orphans.deliveries or orphans.events else [])

        return await self._transaction(take)

    async def nodes(self) -> list[Node]:
        rows = await self._read(
            "SELECT n.*, (SELECT json_group_array(run_id) FROM runs WHERE owner = n.node_id) AS runs, "
            "(SELECT count(*) FROM deliveries WHERE owner = n.node_id) AS deliveries, "
            "(SELECT count(*) FROM events WHERE owner = n.node_id) AS events "
            "FROM nodes n ORDER BY started_at, node_id")
        return [_ROWS.node_from(row) for row in rows]

    async def lead(self, name: str) -> bool:
        return True  # one process per SQLite store: it leads everything

    async def listen(self, wake: Callable[[str], None]) -> None:
        return  # nobody else writes to this database
    # Console sessions. Times in UTC with every digit, so that the text compares as the time does.

    async def save_session(self, session: OperatorSession) -> None:
        await self._write(("INSERT INTO console_sessions (token_hash, operator, role, password_tag, created_at, "
                           "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (session.token_hash, session.operator, session.role, session.password_tag,
                            _session_ts(session.created_at), _session_ts(session.expires_at))))

    async def get_session(self, token_hash: str, now: datetime) -> OperatorSession | None:
        rows = await self._read("SELECT * FROM console_sessions WHERE token_hash = ? AND expires_at > ?",
                                (token_hash, _session_ts(now)))
        return _ROWS.session_from(rows[0]) if rows else None

    async def delete_session(self, token_hash: str) -> bool:
        return await self._write(("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))) == 1

    async def delete_expired_sessions(self, now: datetime) -> int:
        return await self._write(("DELETE FROM console_sessions WHERE expires_at <= ?", (_session_ts(now),)))

    # --- what the nodes of one store share: bans and bytes used -----------------------------------

    async def login_failed(self, ip: str, now: datetime, *, after: int, within: float,
                           duration: float) -> datetime | None:
        def fail(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute("SELECT failures FROM bans WHERE ip = ?", (ip,)).fetchone()
            times = failures_within(row[0] if row else None, now, within)
            if len(times) < after:
                conn.execute("INSERT INTO bans (ip, failures, updated_at) VALUES (?, ?, ?) ON CONFLICT (ip) DO UPDATE "
                             "SET failures = excluded.failures, updated_at = excluded.updated_at",
                             (ip, json.dumps(times), _utc_ts(now)))
                until = None
            else:
                until = now + timedelta(seconds=duration)
                conn.execute("INSERT INTO bans VALUES (?, '[]', ?, (SELECT coalesce(max(seq), 0) + 1 FROM bans), ?) "
                             "ON CONFLICT (ip) DO UPDATE SET failures = '[]', banned_until = excluded.banned_until, "
                             "seq = excluded.seq, updated_at = excluded.updated_at", (ip, _utc_ts(until), _utc_ts(now)))
            # The row with the highest mark stays: the next mark is counted from it, and must never repeat.
            conn.execute("DELETE FROM bans WHERE updated_at < ? AND (banned_until IS NULL OR banned_until < ?) "
                         "AND seq < (SELECT max(seq) FROM bans)",
                         (_utc_ts(now - timedelta(seconds=max(within, BAN_ROWS_KEPT))), _utc_ts(now)))
            return until

        return await self._transaction(fail)

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` in a transaction of its own, which may read before it writes (between group commits)."""
        def run(conn: sqlite3.Connection) -> T:
            with _begun(conn):
                return fn(conn)

        async with self._lock:
            return await self._in_db(run)

    async def banned_until(self, ip: str, now: datetime) -> datetime | None:
        rows = await self._read("SELECT banned_until FROM bans WHERE ip = ?", (ip,))
        until = _dt(rows[0][0]) if rows else None
        return until if until is not None and until > now else None

    async def ban_changes(self, after: int) -> tuple[dict[str, datetime | None], int]:
        rows = await self._read("SELECT ip, banned_until, seq FROM bans WHERE seq > ? ORDER BY seq", (after,))
        return {row[0]: _dt(row[1]) for row in rows}, max([after, *(int(row[2]) for row in rows)])

    async def unban(self, ip: str, now: datetime) -> bool:
        def lift(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT banned_until FROM bans WHERE ip = ?", (ip,)).fetchone()
            if row is None:
                return False
            if row[0] is None:
                conn.execute("UPDATE bans SET failures = '[]' WHERE ip = ?", (ip,))
                return False
            conn.execute("UPDATE bans SET failures = '[]', banned_until = NULL, updated_at = ?, "
                         "seq = (SELECT max(seq) + 1 FROM bans) WHERE ip = ?", (_utc_ts(now), ip))
            until = _dt(row[0])
            return until is not None and until > now

        return await self._transaction(lift)

    async def space_use(self) -> dict[str, int]:
        return {row[0]: int(row[1]) for row in await self._read("SELECT connection, used FROM space_use")}

    async def add_space_use(self, deltas: dict[str, int]) -> dict[str, int]:
        def add(conn: sqlite3.Connection) -> dict[str, int]:
            for connection, delta in sorted(deltas.items()):
                conn.execute("INSERT INTO space_use VALUES (?, max(0, ?)) ON CONFLICT (connection) DO UPDATE "
                             "SET used = max(0, used + ?)", (connection, delta, delta))
            return {row[0]: int(row[1]) for row in conn.execute("SELECT connection, used FROM space_use")}

        return await self._transaction(add)

    async def set_space_use(self, connection: str, used: int) -> None:
        await self._write(("INSERT INTO space_use VALUES (?, ?) ON CONFLICT (connection) DO UPDATE "
                           "SET used = excluded.used", (connection, max(0, used))))

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        async with self._lock:
            await self._db.close()


@contextlib.contextmanager
def _begun(conn: sqlite3.Connection) -> Iterator[None]:
    """The block as one write transaction (on the database thread): committed, or rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _release(conn: sqlite3.Connection, node_id: str | None) -> TakenOver:
    """Give back the work `node_id` holds and forget the node; with None, the work held by no node recorded
    (runs left `processing` by a process from before nodes were recorded, or by one forgotten)."""
    if node_id is None:
        held = "owner IS NULL OR owner NOT IN (SELECT node_id FROM nodes)"
        sent = "owner IS NOT NULL AND owner NOT IN (SELECT node_id FROM nodes)"
        params: tuple[str, ...] = ()
    else:
        held = sent = "owner = ?"
        params = (node_id,)
    runs = tuple(sorted(row[0] for row in conn.execute(
        f"UPDATE runs SET status = 'queued', started_at = NULL, owner = NULL "
        f"WHERE status = 'processing' AND ({held}) RETURNING run_id", params)))
    counts = [conn.execute(f"UPDATE {table} SET owner = NULL WHERE {sent}", params).rowcount
              for table in ("deliveries", "events")]
    if node_id is not None:
        # its tus uploads' holds too (each holder's name starts with its node's id)
        conn.execute("UPDATE uploads SET holder = NULL, held_until = NULL WHERE substr(holder, 1, ?) = ?",
                      (len(node_id) + 1, node_id + "/"))
        conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
    return TakenOver(node_id or "", runs, *counts)


def _uploads(conn: sqlite3.Connection, *, where: str, params: Sequence[Any]) -> list[Upload]:
    """Uploads with their parts (on the database thread)."""
    return [_ROWS.upload_from(row, conn.execute(
        "SELECT part_number, etag, records FROM upload_parts WHERE upload_id = ? ORDER BY part_number",
        (row["upload_id"],)).fetchall()) for row in conn.execute(f"SELECT * FROM uploads {where}", params)]


def _commit_batch(conn: sqlite3.Connection, *,
                  batch: list[tuple[tuple[str, tuple[Any, ...]], ...]]) -> list[int | BaseException]:
    """One transaction for many callers' statement groups (on the database thread), each group inside
    its own savepoint: one group's failure does not undo the others."""
    with _begun(conn):
        return [_apply(conn, statements) for statements in batch]


def _apply(conn: sqlite3.Connection, statements: tuple[tuple[str, tuple[Any, ...]], ...]) -> int | BaseException:
    if len(statements) == 1:
        # SQLite undoes a failed statement on its own, without touching the rest of the transaction.
        try:
            return conn.execute(*statements[0]).rowcount
        except sqlite3.Error as exc:
            return exc
    conn.execute("SAVEPOINT w")
    try:
        count = 0
        for sql, params in statements:
            count = conn.execute(sql, params).rowcount
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK TO w")
        conn.execute("RELEASE w")
        return exc
    conn.execute("RELEASE w")
    return count


# mypy checks here, where the class is, that SqliteStore has every method of the Store protocol.
_STORE: type[Store] = SqliteStore
