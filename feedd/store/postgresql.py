"""`PostgresStore`: the Store in a PostgreSQL database that several feedd nodes share, through a psycopg
connection pool. Each method is one statement, atomic on its own (but mark_swept: two, in a transaction
under the run's row lock); the conditional writes (a run at its expected status, an object at its version)
check and write in that same statement, so two nodes racing for one run or one object cannot both win.
Also here: the schema's migrations, run under an advisory lock, and the host key every node must serve with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from feedd.errors import ConflictError, DuplicateContentError, StartupError
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
from feedd.store.postgresql_migrations import MIGRATIONS
from feedd.store.rows import BAN_ROWS_KEPT, Rows, failures_within, owner_of

Connection = psycopg.AsyncConnection[DictRow]

# pg_advisory_lock's key for migrations: any fixed number, the same on every node ("feedd" in ASCII).
MIGRATION_LOCK = 0x6665656464
LEADER_LOCK = 0x6665656464 << 8  # pg_advisory_lock's keys for leaders: this plus the CRC-32 of the name

# pg_advisory_xact_lock's key for bans and unbans ("bans" in ASCII): see PostgresStore.login_failed.
BAN_LOCK = 0x62616E73
POOL_SIZE = 10  # connections per node: the statements it can have in flight at once

_RUN_COLUMNS = (
    "run_id", "pipeline", "connection", "direction", "status", "source_kind", "source_name", "source_size",
    "source_sha256", "spool_path", "rows", "valid", "invalid", "mapping", "errors", "error_code", "error_message",
    "duplicate_of", "meta", "created_at", "started_at", "finished_at", "acknowledged_at",
)
_INSERT_RUN = f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_RUN_COLUMNS))})"
_UPDATE_RUN = f"UPDATE runs SET {', '.join(f'{c} = %s' for c in (*_RUN_COLUMNS[1:], 'owner'))}"

# A run's deliveries come with it, in the order they were added, in the same statement (one snapshot, one
# round trip). Timestamps are spelled out with all six digits of microseconds so that they read back exactly.
_TS_JSON = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
_SELECT_RUNS = f"""
    SELECT r.*, (SELECT coalesce(json_agg(json_build_array(d.destination, d.status, d.attempts, d.last_error,
                                                           {_TS_JSON.format("d.delivered_at")},
                                                           {_TS_JSON.format("d.next_attempt_at")}) ORDER BY d.seq),
                                 '[]'::json)
                 FROM deliveries d WHERE d.run_id = r.run_id) AS deliveries_json
    FROM runs r"""

# The connections with queued runs, one index seek each on runs_queued (a partial index holding only queued
# runs), then the oldest of each: however many runs a connection queued, or ever had.
_QUEUED_HEADS = f"""
    WITH RECURSIVE names(name) AS (
        SELECT min(connection) FROM runs WHERE status = 'queued'
        UNION ALL
        SELECT (SELECT min(connection) FROM runs WHERE status = 'queued' AND connection > names.name)
        FROM names WHERE names.name IS NOT NULL
    )
    {_SELECT_RUNS}
    WHERE r.run_id IN (
        SELECT q.run_id FROM names, LATERAL (
            SELECT run_id FROM runs WHERE status = 'queued' AND connection = names.name ORDER BY run_id LIMIT %s
        ) q WHERE names.name IS NOT NULL)
    ORDER BY r.run_id"""

# The rows written along with a run or an object go in with it, in one statement: WITH clauses insert them
# only if the main change took place, so a write is one round trip, atomic without a transaction around it.
# Each row's values are cast: in a VALUES list PostgreSQL cannot infer a parameter's type from the table.
_DELIVERIES = ("deliveries", ("run_id", "destination", "status", "attempts", "last_error", "delivered_at",
                              "next_attempt_at"),
               ("text", "text", "text", "int", "text", "timestamptz", "timestamptz"),
               "ON CONFLICT (run_id, destination) DO UPDATE SET status = excluded.status, "
               "attempts = excluded.attempts, last_error = excluded.last_error, "
               "delivered_at = excluded.delivered_at, next_attempt_at = excluded.next_attempt_at, owner = NULL")
# An event already queued for the same subscriber is kept as it is.
_EVENTS = ("events", ("event_id", "url", "type", "body", "status", "attempts", "last_error", "next_attempt_at",
                      "created_at"),
           ("text", "text", "text", "text", "text", "int", "text", "timestamptz", "timestamptz"),
           "ON CONFLICT (event_id, url) DO NOTHING")
_MAPPINGS = ("mapping_memory", ("connection", "header_key", "mapping", "updated_at"),
             ("text", "text", "text", "timestamptz"),
             "ON CONFLICT (connection, header_key) DO UPDATE SET mapping = excluded.mapping, "
             "updated_at = excluded.updated_at")
_AUDIT = ("audit", ("at", "actor", "action", "kind", "name", "before", "after"),
          ("timestamptz", "text", "text", "text", "text", "text", "text"), "")
_ARRIVALS = ("arrivals", ("pipeline", "since", "checked_until", "expect", "updated_at"),
             ("text", "timestamptz", "timestamptz", "text", "timestamptz"),
             "ON CONFLICT (pipeline) DO UPDATE SET since = excluded.since, checked_until = excluded.checked_until, "
             "expect = excluded.expect, updated_at = excluded.updated_at")
# A window recorded missed already is kept as it was first recorded.
_MISSED = ("arrivals_missed", ("pipeline", "expected_by", "opens", "deadline", "last_arrival_at", "reported_at"),
           ("text", "timestamptz", "timestamptz", "timestamptz", "timestamptz", "timestamptz"),
           "ON CONFLICT (pipeline, expected_by) DO NOTHING")

_Table = tuple[str, tuple[str, ...], tuple[str, ...], str]

# A pipeline's watch with its last missed windows (newest first), in one statement: one snapshot.
_ARRIVAL_STATE = f"""
    SELECT a.since, a.checked_until, a.expect,
           (SELECT coalesce(json_agg(json_build_array({_TS_JSON.format("m.expected_by")}, {_TS_JSON.format("m.opens")},
                                                      {_TS_JSON.format("m.deadline")},
                                                      {_TS_JSON.format("m.last_arrival_at")},
                                                      {_TS_JSON.format("m.reported_at")}) ORDER BY m.expected_by DESC),
                             '[]'::json)
            FROM (SELECT * FROM arrivals_missed WHERE pipeline = a.pipeline ORDER BY expected_by DESC LIMIT %s) m
           ) AS missed_json
    FROM arrivals a WHERE a.pipeline = %s"""


def _kept(part: SweptPart, table: str = "") -> str:
    """Whether a run's `part` is still on disk: no `swept.<part>` in its meta (a JSON null counts as none, as
    in SQLite's json_extract). The very expression of the partial indexes runs_input_kept and
    runs_outputs_kept, so that the planner can use them."""
    return f"({table}meta::jsonb #>> '{{swept,{part.value}}}') IS NULL"


class _Statement:
    """One statement made of WITH clauses: a main change, then rows written only if it changed a row."""

    def __init__(self, main: str | None = None, params: Sequence[Any] = ()) -> None:
        self._clauses: list[str] = []
        self.params: list[Any] = []
        self._guard = ""
        if main is not None:
            self._clauses.append(f"changed AS ({main} RETURNING 1)")
            self.params += params
            self._guard = " WHERE EXISTS (SELECT 1 FROM changed)"

    def rows(self, table: _Table, rows: Sequence[tuple[Any, ...]]) -> _Statement:
        if rows:
            name, columns, types, conflict = table
            row = f"({', '.join(f'%s::{t}' for t in types)})"
            self._clauses.append(
                f"w{len(self._clauses)} AS (INSERT INTO {name} ({', '.join(columns)}) "
                f"SELECT * FROM (VALUES {', '.join([row] * len(rows))}) AS v{self._guard} {conflict})")
            self.params += [value for r in rows for value in r]
        return self

    @property
    def sql(self) -> str:
        last = "SELECT count(*) AS n FROM changed" if self._guard else "SELECT 1 AS n"
        return f"WITH {', '.join(self._clauses)} {last}" if self._clauses else last


_UPLOAD_COLUMNS = (
    "upload_id", "kind", "state", "connection", "pipeline", "total_parts", "parts", "records", '"offset"', "length",
    "filename", "run_id", "meta", "created_at", "updated_at", "expires_at", "holder",
)
_UPSERT_UPLOAD = (f"INSERT INTO uploads ({', '.join(_UPLOAD_COLUMNS)}) "
                  f"VALUES ({', '.join(['%s'] * len(_UPLOAD_COLUMNS))}) ON CONFLICT (upload_id) DO UPDATE SET "
                  + ", ".join(f"{c} = excluded.{c}" for c in _UPLOAD_COLUMNS[1:]))
# A write of one who read the upload and decided on what it read: READ COMMITTED re-checks these on the row as a
# concurrent writer left it, so of two writers who read the same, one wins.
_UPDATE_UPLOAD = (f"UPDATE uploads SET {', '.join(f'{c} = %s' for c in _UPLOAD_COLUMNS[1:])} WHERE upload_id = %s "
                  'AND state = %s AND "offset" = %s AND run_id IS NOT DISTINCT FROM %s '
                  "AND holder IS NOT DISTINCT FROM %s AND updated_at = %s")
# An upload with its parts, in one statement: one snapshot.
_SELECT_UPLOADS = """
    SELECT u.*, (SELECT coalesce(json_agg(json_build_array(p.part_number, p.etag, p.records) ORDER BY p.part_number),
                                 '[]'::json)
                 FROM upload_parts p WHERE p.upload_id = u.upload_id) AS parts_json
    FROM uploads u"""
_OPEN = [str(UploadState.INITIATED), str(UploadState.UPLOADING)]
# A content's original: a run that is not a duplicate claims its (connection, sha256) in its insert, strictly
# when it must be the first (another's key fails the insert), else keeping the earliest run.
_CLAIM_ORIGINAL = ("originals", ("connection", "sha256", "run_id"), ("text", "text", "text"), "")
_KEEP_ORIGINAL = (*_CLAIM_ORIGINAL[:3], "ON CONFLICT (connection, sha256) DO UPDATE "
                                       "SET run_id = least(originals.run_id, excluded.run_id)")


class PostgresStore:
    """Open with `await PostgresStore.open(dsn)`; migrations run before it returns."""

    def __init__(self, pool: AsyncConnectionPool[Connection], dsn: str = "") -> None:
        self._pool = pool
        self._dsn = dsn
        self._returning: set[asyncio.Task[None]] = set()
        self._leads: dict[str, tuple[Connection, bool]] = {}  # name -> its own session, and whether it leads

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = POOL_SIZE) -> PostgresStore:
        await migrate(dsn)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            dsn, min_size=1, max_size=max(1, pool_size), open=False, name="feedd",
            connection_class=psycopg.AsyncConnection[DictRow],
            # Autocommit: every read and write is one statement, so one round trip and no BEGIN or COMMIT.
            kwargs={"autocommit": True, "row_factory": dict_row}, configure=_configure)
        try:
            await pool.open(wait=True, timeout=30.0)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, PoolTimeout):
                raise StartupError(f"cannot connect to the PostgreSQL store (store.dsn): {exc}") from exc
            raise
        return cls(pool, dsn)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool, given back after the block.

        Not the pool's own `connection()`: while it waits for a free connection, it waits in asyncio.wait_for,
        which on Python 3.11 can swallow a cancel that lands as the connection comes, and a component being
        stopped would then go on to wait forever. The wait runs in a task of its own here, so a cancel always
        reaches the caller; a connection that comes after all goes straight back.
        """
        getting = asyncio.ensure_future(self._pool.getconn())
        try:
            conn = await asyncio.shield(getting)
        except asyncio.CancelledError:
            getting.add_done_callback(self._give_back)
            raise
        try:
            async with conn:  # as the pool's connection(): rolled back if the block raises
                yield conn
        finally:
            await self._pool.putconn(conn)

    def _give_back(self, getting: asyncio.Future[Connection]) -> None:
        if not getting.cancelled() and getting.exception() is None:
            task = asyncio.ensure_future(self._pool.putconn(getting.result()))
            self._returning.add(task)
            task.add_done_callback(self._returning.discard)

    async def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[DictRow]:
        async with self._connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def schema_version(self) -> int:
        async with self._connection() as conn:
            return await _version(conn)

    async def insert_run(self, run: Run, events: Sequence[Event] = (), *, first_of_content: bool = False) -> None:
        statement = _Statement(_INSERT_RUN, _ROWS.run_row(run))
        if run.duplicate_of is None:
            statement.rows(_CLAIM_ORIGINAL if first_of_content else _KEEP_ORIGINAL,
                           [(run.connection, run.source.sha256, run.run_id)])
        statement.rows(_DELIVERIES, [_ROWS.delivery_row(d) for d in run.deliveries])
        statement.rows(_EVENTS, [_ROWS.event_row(e) for e in events])
        try:
            await self._write(statement)
        except psycopg.errors.UniqueViolation as exc:
            # A node inserting the same content waits here for the other's commit, then fails: one is first.
            key = (run.connection, run.source.sha256)
            original = (await self.originals({key})).get(key) if first_of_content else None
            if original is not None and original != run.run_id:
                raise DuplicateContentError(f"run {original} has this content already", original) from exc
            raise ConflictError(f"run {run.run_id} already exists") from exc

    async def _write(self, statement: _Statement) -> int:
        """Run one statement (atomic on its own); the number of rows its main change wrote."""
        async with self._connection() as conn:
            row = await (await conn.execute(statement.sql, statement.params)).fetchone()
        return int(row["n"]) if row else 0

    async def update_run(self, run: Run, *, expect: RunStatus | None = None, events: Sequence[Event] = (),
                         deliveries: Sequence[Delivery] = (), remember: Remembered | None = None,
                         owner: str | None = None, audit: AuditEntry | None = None) -> bool:
        row = (*_ROWS.run_row(run)[1:], owner_of(run, owner))
        if expect is RunStatus.QUEUED:
            # A claim: a queued run another node is writing right now (most likely claiming it too) is left
            # to it at once instead of waited for; the runner looks again at its next poll.
            sql = (f"{_UPDATE_RUN} WHERE run_id = (SELECT run_id FROM runs WHERE run_id = %s AND status = %s "
                   "FOR UPDATE SKIP LOCKED)")
            params: tuple[Any, ...] = (*row, run.run_id, str(expect))
        elif expect is not None:
            # READ COMMITTED re-checks the status on the row as a concurrent writer left it: one of two wins.
            sql, params = f"{_UPDATE_RUN} WHERE run_id = %s AND status = %s", (*row, run.run_id, str(expect))
        else:
            sql, params = f"{_UPDATE_RUN} WHERE run_id = %s", (*row, run.run_id)
        if owner is not None and expect is not RunStatus.QUEUED:
            sql, params = f"{sql} AND owner = %s", (*params, owner)
        statement = _Statement(sql, params)
        statement.rows(_MAPPINGS, [_ROWS.mapping_row(remember)] if remember is not None else [])
        # One row per destination: an upsert cannot touch a row twice in one statement (the last one wins).
        statement.rows(_DELIVERIES, [_ROWS.delivery_row(d) for d in {d.destination: d for d in deliveries}.values()])
        statement.rows(_EVENTS, [_ROWS.event_row(e) for e in events])
        statement.rows(_AUDIT, [_ROWS.audit_row(audit)] if audit is not None else [])
        return await self._write(statement) == 1

    async def get_run(self, run_id: str) -> Run | None:
        rows = await self._read(f"{_SELECT_RUNS} WHERE r.run_id = %s", (run_id,))
        return _run_from(rows[0]) if rows else None

    async def list_runs(self, query: RunQuery) -> tuple[list[Run], str | None]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("connection", query.connection), ("pipeline", query.pipeline)):
            if value is not None:
                clauses.append(f"r.{column} = %s")
                params.append(value)
        if query.statuses:
            clauses.append("r.status = ANY(%s)")
            params.append([str(s) for s in query.statuses])
        if query.acknowledged is not None:
            clauses.append("r.acknowledged_at IS NOT NULL" if query.acknowledged else "r.acknowledged_at IS NULL")
        if query.delivery_failed is not None:
            clauses.append(("" if query.delivery_failed else "NOT ") + "EXISTS (SELECT 1 FROM deliveries d "
                           "WHERE d.run_id = r.run_id AND d.status = 'failed')")
        if query.connections is not None:
            clauses.append("r.connection = ANY(%s)")
            params.append(sorted(query.connections))
        if query.since_id is not None:
            clauses.append("r.run_id >= %s")
            params.append(query.since_id)
        if query.until_id is not None:
            clauses.append("r.run_id < %s")
            params.append(query.until_id)
        if query.name:
            clauses.append("strpos(lower(r.source_name), %s) > 0")
            params.append(query.name.lower())
        if query.cursor is not None:
            clauses.append("r.run_id > %s" if query.oldest_first else "r.run_id < %s")
            params.append(query.cursor)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = max(1, query.limit)
        order = "ASC" if query.oldest_first else "DESC"
        rows = await self._read(f"{_SELECT_RUNS} {where} ORDER BY r.run_id {order} LIMIT %s", (*params, limit + 1))
        runs = [_run_from(row) for row in rows[:limit]]
        return runs, (runs[-1].run_id if len(rows) > limit else None)

    async def queued_heads(self, per_connection: int) -> list[Run]:
        return [_run_from(row) for row in await self._read(_QUEUED_HEADS, (max(1, per_connection),))]

    async def originals(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
        if not keys:
            return {}
        connections, hashes = zip(*keys, strict=True)
        # One primary key lookup per key, all in one statement.
        rows = await self._read(
            "SELECT o.connection, o.sha256, o.run_id FROM unnest(%s::text[], %s::text[]) AS k(connection, sha256) "
            "JOIN originals o ON o.connection = k.connection AND o.sha256 = k.sha256",
            (list(connections), list(hashes)))
        return {(row["connection"], row["sha256"]): row["run_id"] for row in rows}

    async def save_delivery(self, delivery: Delivery, owner: str | None = None) -> bool:
        row = _ROWS.delivery_row(delivery)
        if owner is None:
            return await self._write(_Statement().rows(_DELIVERIES, [row])) == 1
        return await self._execute(
            "UPDATE deliveries SET status = %s, attempts = %s, last_error = %s, delivered_at = %s, "
            "next_attempt_at = %s, owner = NULL WHERE run_id = %s AND destination = %s AND owner = %s",
            (*row[2:], *row[:2], owner)) == 1

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement; the number of rows it changed."""
        async with self._connection() as conn:
            return (await conn.execute(sql, params)).rowcount

    async def due_deliveries(self, now: datetime, limit: int = 100, owner: str | None = None) -> list[Delivery]:
        rows = await self._due("deliveries", "run_id, destination", "next_attempt_at NULLS FIRST, seq", now, limit,
                               owner)
        return [_ROWS.delivery_from(row) for row in rows]

    async def _due(self, table: str, key: str, order: str, now: datetime, limit: int,
                   owner: str | None) -> list[DictRow]:
        """Pending rows of `table` whose next attempt has come; with `owner`, claimed for it in the same
        statement (rows another node is claiming at this moment are skipped, not waited for)."""
        due = f"SELECT * FROM {table} WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= %s)"
        if owner is None:
            return await self._read(f"{due} ORDER BY {order} LIMIT %s", (now, limit))
        # Rows it holds already are read, not written again (the loop asks every 50 ms while it sends); both
        # parts see the same snapshot, so a row just claimed is not also read as held.
        rows = await self._read(
            f"WITH held AS ({due} AND owner = %s ORDER BY {order} LIMIT %s), "
            f"claimed AS (UPDATE {table} t SET owner = %s FROM ({due} AND owner IS NULL ORDER BY {order} "
            f"LIMIT %s FOR UPDATE SKIP LOCKED) c WHERE ({', '.join(f't.{k}' for k in key.split(', '))}) = "
            f"({', '.join(f'c.{k}' for k in key.split(', '))}) RETURNING t.*) "
            "SELECT * FROM held UNION ALL SELECT * FROM claimed", (now, owner, limit, owner, now, limit))
        first = datetime.min.replace(tzinfo=UTC)
        column = order.split()[0].rstrip(",")  # UPDATE ... RETURNING keeps no order: put it back
        return sorted(rows, key=lambda r: (r[column] or first, r["seq"]))[:limit]

    async def add_events(self, events: Sequence[Event]) -> None:
        if events:
            await self._write(_Statement().rows(_EVENTS, [_ROWS.event_row(e) for e in events]))

    async def save_event(self, event: Event, owner: str | None = None) -> bool:
        sql = ("UPDATE events SET status = %s, attempts = %s, last_error = %s, next_attempt_at = %s, owner = NULL "
               "WHERE event_id = %s AND url = %s")
        params: tuple[Any, ...] = (str(event.status), event.attempts, event.last_error, event.next_attempt_at,
                                   event.event_id, event.url)
        if owner is not None:
            sql, params = f"{sql} AND owner = %s", (*params, owner)
        return await self._execute(sql, params) == 1

    async def due_events(self, now: datetime, limit: int = 100, owner: str | None = None) -> list[Event]:
        rows = await self._due("events", "event_id, url", "created_at, seq", now, limit, owner)
        return [_ROWS.event_from(row) for row in rows]

    async def events_of(self, event_type: str | None = None) -> list[Event]:
        if event_type is None:
            rows = await self._read("SELECT * FROM events ORDER BY created_at, seq")
        else:
            rows = await self._read("SELECT * FROM events WHERE type = %s ORDER BY created_at, seq", (event_type,))
        return [_ROWS.event_from(row) for row in rows]

    async def list_events(self, status: DeliveryStatus | None = None, limit: int = 100,
                          cursor: str | None = None) -> tuple[list[Event], str | None]:
        # The cursor is the seq of the last event of the page: events share their id between subscribers.
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = %s")
            params.append(str(status))
        if cursor is not None:
            clauses.append("seq < %s")
            params.append(int(cursor))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = max(1, limit)
        rows = await self._read(f"SELECT * FROM events {where} ORDER BY seq DESC LIMIT %s", (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return [_ROWS.event_from(r) for r in rows], (str(rows[-1]["seq"]) if more else None)

    async def event_counts(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in
                await self._read("SELECT status, count(*) AS n FROM events GROUP BY status")}

    async def next_due(self, owner: str | None = None) -> datetime | None:
        mine = "" if owner is None else " AND (owner IS NULL OR owner = %(owner)s)"
        rows = await self._read(
            f"SELECT min(t) AS t FROM (SELECT min(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'{mine} "
            f"UNION ALL SELECT min(next_attempt_at) FROM events WHERE status = 'pending'{mine}) AS due",
            {"owner": owner})
        return _dt(rows[0]["t"]) if rows else None

    async def save_upload(self, upload: Upload, *, expect: Upload | None = None) -> bool:
        row = _ROWS.upload_row(upload)
        async with self._connection() as conn:
            if expect is None:
                cur = await conn.execute(_UPSERT_UPLOAD, row)
            else:
                cur = await conn.execute(_UPDATE_UPLOAD, (*row[1:], upload.upload_id, str(expect.state), expect.offset,
                                                          expect.run_id, expect.holder, expect.updated_at))
            return cur.rowcount == 1

    async def get_upload(self, upload_id: str) -> Upload | None:
        rows = await self._read(f"{_SELECT_UPLOADS} WHERE u.upload_id = %s", (upload_id,))
        return _upload_from(rows[0]) if rows else None

    async def stale_uploads(self, states: tuple[UploadState, ...], updated_before: datetime,
                            limit: int = 100) -> list[Upload]:
        rows = await self._read(
            f"{_SELECT_UPLOADS} WHERE u.state = ANY(%s) AND u.updated_at < %s ORDER BY u.updated_at LIMIT %s",
            ([str(s) for s in states], updated_before, limit))
        return [_upload_from(row) for row in rows]

    async def save_part(self, upload_id: str, number: int, etag: str, records: int) -> bool:
        # The upload's row is written first, so parts of one upload recorded at once queue on its lock (each
        # then sees the other's commit), and a complete that set the run id meanwhile keeps the part out.
        async with self._connection() as conn:
            cur = await conn.execute(
                "WITH u AS (UPDATE uploads SET state = %s, updated_at = %s WHERE upload_id = %s AND state = ANY(%s) "
                "AND run_id IS NULL RETURNING upload_id) "
                "INSERT INTO upload_parts (upload_id, part_number, etag, records) SELECT upload_id, %s, %s, %s FROM u "
                "ON CONFLICT (upload_id, part_number) DO UPDATE SET etag = excluded.etag, records = excluded.records",
                (str(UploadState.UPLOADING), utcnow(), upload_id, _OPEN, number, etag, records))
            return cur.rowcount == 1

    async def claim_upload(self, upload_id: str, holder: str, seconds: float) -> Upload | None:
        # By the database's clock: the nodes' own clocks may differ. The row comes back as written (RETURNING),
        # after whatever a writer it waited for wrote, not as the statement's snapshot had it.
        rows = await self._read(
            "UPDATE uploads SET holder = %s, held_until = clock_timestamp() + %s * interval '1 second' "
            "WHERE upload_id = %s AND (holder IS NULL OR holder = %s OR held_until IS NULL "
            "OR held_until < clock_timestamp()) RETURNING *, (SELECT coalesce(json_agg(json_build_array(p.part_number, "
            "p.etag, p.records) ORDER BY p.part_number), '[]'::json) FROM upload_parts p "
            "WHERE p.upload_id = uploads.upload_id) AS parts_json", (holder, seconds, upload_id, holder))
        return _upload_from(rows[0]) if rows else None

    async def release_uploads(self, holder_prefix: str) -> int:
        async with self._connection() as conn:
            cur = await conn.execute("UPDATE uploads SET holder = NULL, held_until = NULL "
                                     "WHERE starts_with(holder, %s)", (holder_prefix,))
            return cur.rowcount

    async def disable_target(self, target: str, reason: str) -> None:
        async with self._connection() as conn:
            await conn.execute("INSERT INTO disabled_targets VALUES (%s, %s, %s) ON CONFLICT (target) DO UPDATE SET "
                               "reason = excluded.reason, disabled_at = excluded.disabled_at",
                               (target, reason, utcnow()))

    async def enable_target(self, target: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM disabled_targets WHERE target = %s", (target,))

    async def disabled_targets(self) -> dict[str, str]:
        return {row["target"]: row["reason"] for row in await self._read("SELECT target, reason FROM disabled_targets")}

    async def status_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        rows = await self._read("SELECT 'run' AS of, status, count(*) AS n FROM runs GROUP BY status UNION ALL "
                                "SELECT 'upload', state, count(*) FROM uploads GROUP BY state")
        runs = {row["status"]: row["n"] for row in rows if row["of"] == "run"}
        uploads = {row["status"]: row["n"] for row in rows if row["of"] == "upload"}
        return runs, uploads

    # The console's counts: ranges of the run id index (ids sort by creation time), never the whole table.

    async def run_counts(self, since_id: str) -> list[tuple[str, str, int]]:
        rows = await self._read("SELECT connection, status, count(*) AS n FROM runs WHERE run_id >= %s "
                                "GROUP BY connection, status", (since_id,))
        return [(row["connection"], row["status"], row["n"]) for row in rows]

    async def runs_per_day(self, first_day: datetime, days: int,
                           connection: str | None = None) -> list[tuple[str, str, int]]:
        start, end = id_floor(first_day), id_floor(first_day + timedelta(days=days))
        where, params = "run_id >= %s AND run_id < %s", [start, end]
        if connection is not None:
            where, params = f"connection = %s AND {where}", [connection, *params]
        rows = await self._read(f"SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, status, "
                                f"count(*) AS n FROM runs WHERE {where} GROUP BY day, status", params)
        return [(row["day"], row["status"], row["n"]) for row in rows]

    async def failing_deliveries(self, since_id: str) -> dict[str, int]:
        rows = await self._read("SELECT r.connection, count(*) AS n FROM runs r WHERE r.run_id >= %s AND EXISTS "
                                "(SELECT 1 FROM deliveries d WHERE d.run_id = r.run_id AND d.status = 'failed') "
                                "GROUP BY r.connection", (since_id,))
        return {row["connection"]: row["n"] for row in rows}

    async def count_by_connection(self, status: RunStatus) -> dict[str, int]:
        rows = await self._read("SELECT connection, count(*) AS n FROM runs WHERE status = %s GROUP BY connection",
                                (str(status),))
        return {row["connection"]: row["n"] for row in rows}

    async def last_arrivals(self, connections: Collection[str]) -> dict[str, datetime]:
        if not connections:
            return {}
        # One probe of runs_by_connection per name, all in one statement.
        rows = await self._read(
            "SELECT c.name, (SELECT created_at FROM runs WHERE connection = c.name ORDER BY run_id DESC LIMIT 1) "
            "AS at FROM unnest(%s::text[]) AS c(name)", (list(connections),))
        return {row["name"]: row["at"] for row in rows if row["at"] is not None}

    async def remember_mapping(self, connection: str, header_key: str, mapping: dict[str, str]) -> None:
        remembered = Remembered(connection, header_key, mapping)
        await self._write(_Statement().rows(_MAPPINGS, [_ROWS.mapping_row(remembered)]))

    async def recall_mapping(self, connection: str, header_key: str) -> dict[str, str] | None:
        rows = await self._read("SELECT mapping FROM mapping_memory WHERE connection = %s AND header_key = %s",
                                (connection, header_key))
        return dict(json.loads(rows[0]["mapping"])) if rows else None

    async def set_pipeline_active(self, pipeline: str, active: bool) -> None:
        async with self._connection() as conn:
            await conn.execute("INSERT INTO pipeline_overrides VALUES (%s, %s, %s) ON CONFLICT (pipeline) DO UPDATE "
                               "SET active = excluded.active, updated_at = excluded.updated_at",
                               (pipeline, active, utcnow()))

    async def pipeline_overrides(self) -> dict[str, bool]:
        # Not cached, unlike SQLite's: another node may switch a pipeline at any time.
        return {row["pipeline"]: row["active"]
                for row in await self._read("SELECT pipeline, active FROM pipeline_overrides")}

    async def managed_objects(self) -> list[ManagedObject]:
        rows = await self._read("SELECT * FROM managed_objects ORDER BY created_at, seq")
        return [_ROWS.object_from(r) for r in rows]

    async def save_object(self, obj: ManagedObject, *, expect: int | None, audit: AuditEntry,
                          events: Sequence[Event] = ()) -> bool:
        body = json.dumps(obj.body)
        if expect is None:
            sql = ("INSERT INTO managed_objects (kind, name, body, version, created_at, updated_at) "
                   "VALUES (%s, %s, %s, %s, %s, %s)")
            params: tuple[Any, ...] = (str(obj.kind), obj.name, body, obj.version, obj.created_at, obj.updated_at)
        else:
            sql = ("UPDATE managed_objects SET body = %s, version = %s, updated_at = %s "
                   "WHERE kind = %s AND name = %s AND version = %s")
            params = (body, obj.version, obj.updated_at, str(obj.kind), obj.name, expect)
        try:
            return await self._write_object(sql, params, audit, events)
        except psycopg.errors.UniqueViolation as exc:
            raise ConflictError(f"{obj.kind} {obj.name!r} already exists") from exc

    async def delete_object(self, kind: ObjectKind, name: str, *, expect: int, audit: AuditEntry,
                            events: Sequence[Event] = ()) -> bool:
        return await self._write_object("DELETE FROM managed_objects WHERE kind = %s AND name = %s AND version = %s",
                                        (str(kind), name, expect), audit, events)

    async def _write_object(self, sql: str, params: tuple[Any, ...], audit: AuditEntry,
                            events: Sequence[Event]) -> bool:
        """An object's change, with its audit entry and events only if it changed a row."""
        statement = _Statement(sql, params).rows(_AUDIT, [_ROWS.audit_row(audit)])
        return await self._write(statement.rows(_EVENTS, [_ROWS.event_row(e) for e in events])) == 1

    async def add_audit(self, entry: AuditEntry, events: Sequence[Event] = ()) -> None:
        statement = _Statement().rows(_AUDIT, [_ROWS.audit_row(entry)])
        await self._write(statement.rows(_EVENTS, [_ROWS.event_row(e) for e in events]))

    async def list_audit(self, limit: int = 100, cursor: str | None = None) -> tuple[list[AuditEntry], str | None]:
        limit = max(1, limit)
        where, params = ("WHERE seq < %s", (int(cursor),)) if cursor is not None else ("", ())
        rows = await self._read(f"SELECT * FROM audit {where} ORDER BY seq DESC LIMIT %s", (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return [_ROWS.audit_from(r) for r in rows], (str(rows[-1]["seq"]) if more else None)

    async def arrival_state(self, pipeline: str, missed: int = 10) -> ArrivalState | None:
        rows = await self._read(_ARRIVAL_STATE, (max(0, missed), pipeline))
        if not rows:
            return None
        row = rows[0]
        return ArrivalState(since=_dt(row["since"]) or utcnow(), checked_until=_dt(row["checked_until"]),
                            missed=tuple(_ROWS.missed(*values) for values in row["missed_json"]), expect=row["expect"])

    async def save_arrival_state(self, pipeline: str, since: datetime, checked_until: datetime | None,
                                 missed: Sequence[Missed] = (), events: Sequence[Event] = (),
                                 expect: str = "") -> None:
        # One row per window, the first given (as SQLite's INSERT OR IGNORE keeps it): within one statement,
        # which of two rows for a key would go in first is not said.
        windows: dict[datetime, Missed] = {}
        for m in missed:
            windows.setdefault(m.expected_by, m)
        statement = _Statement().rows(_ARRIVALS, [(pipeline, since, checked_until, expect, utcnow())])
        statement.rows(_MISSED, [(pipeline, m.expected_by, m.opens, m.deadline, m.last_arrival_at, m.reported_at)
                                 for m in windows.values()])
        await self._write(statement.rows(_EVENTS, [_ROWS.event_row(e) for e in events]))

    async def received(self, pipeline: str, after: datetime | None, until: datetime | None,
                       min_rows: int) -> list[Received]:
        clauses: list[str] = ["pipeline = %s"]
        params: list[Any] = [pipeline]
        if after is not None:
            clauses.append("created_at > %s")
            params.append(after)
        if until is not None:
            clauses.append("created_at <= %s")
            params.append(until)
        rows = await self._read(
            "SELECT status, (valid >= %s OR rows = 0) AS enough, count(*) AS n, max(created_at) AS last_at "
            f"FROM runs WHERE {' AND '.join(clauses)} GROUP BY 1, 2", (min_rows, *params))
        return [Received(r["status"], bool(r["enough"]), int(r["n"]), _dt(r["last_at"]) or utcnow()) for r in rows]

    async def sweep_candidates(self, query: SweepQuery) -> list[Run]:
        due: list[str] = []
        params: list[Any] = []
        if query.finished_before is not None:
            due.append("r.finished_at < %s")
            params.append(query.finished_before)
        if query.acked_before is not None:
            due.append("r.acknowledged_at < %s")
            params.append(query.acked_before)
        if not due:
            return []
        clauses = [_kept(query.part, "r."), f"({' OR '.join(due)})", "r.status = ANY(%s)",
                   "(r.status != 'completed' OR NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.run_id = r.run_id "
                   "AND d.status = 'pending'))"]
        params.append([str(s) for s in SWEEPABLE])
        if query.pipeline is not None:
            clauses.append("r.pipeline = %s")
            params.append(query.pipeline)
        elif query.others_than:
            clauses.append("(r.pipeline IS NULL OR r.pipeline <> ALL(%s))")
            params.append(sorted(query.others_than))
        # NULLS FIRST: where the SQLite store puts a run without finished_at (due by its acknowledgement alone)
        rows = await self._read(f"{_SELECT_RUNS} WHERE {' AND '.join(clauses)} "
                                "ORDER BY r.finished_at NULLS FIRST, r.run_id LIMIT %s", (*params, max(1, query.limit)))
        return [_run_from(row) for row in rows]

    async def mark_swept(self, run_id: str, part: SweptPart) -> bool:
        # Read, then written under the row's lock: the meta is text as written, and the mark goes in with its
        # keys left in their order (jsonb would sort them). A run that leaves SWEEPABLE meanwhile is re-read
        # by FOR UPDATE as it was left, and not marked.
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT meta FROM runs WHERE run_id = %s AND status = ANY(%s) FOR UPDATE",
                                     (run_id, [str(s) for s in SWEEPABLE]))
            row = await cur.fetchone()
            if row is None:
                return False
            await conn.execute("UPDATE runs SET meta = %s WHERE run_id = %s", (_with_swept(row["meta"], part), run_id))
        return True

    async def join(self, node: Node) -> None:
        await self._execute("INSERT INTO nodes (node_id, started_at, heartbeat_at, info) VALUES (%s, %s, %s, %s) "
                            "ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                            "info = excluded.info", _ROWS.node_row(node))

    async def heartbeat(self, node_id: str, now: datetime) -> bool:
        return await self._execute("UPDATE nodes SET heartbeat_at = %s WHERE node_id = %s", (now, node_id)) == 1

    async def leave(self, node_id: str) -> TakenOver:
        async with self._connection() as conn, conn.transaction():
            return await _release(conn, node_id)

    async def take_over(self, dead_before: datetime, by: str) -> list[TakenOver]:
        async with self._connection() as conn, conn.transaction():
            # Rows locked, and skipped by a node taking over at the same moment: each dead node's work goes
            # back once, through one of them.
            dead = [row["node_id"] for row in await (await conn.execute(
                "SELECT node_id FROM nodes WHERE heartbeat_at < %s AND node_id <> %s ORDER BY node_id "
                "FOR UPDATE SKIP LOCKED", (dead_before, by))).fetchall()]
            taken = [await _release(conn, node_id) for node_id in dead]
            orphans = await _release(conn, None)
        return taken + ([orphans] if orphans.runs or orphans.deliveries or orphans.events else [])

    async def nodes(self) -> list[Node]:
        rows = await self._read(
            "SELECT n.*, (SELECT coalesce(json_agg(run_id), '[]'::json) FROM runs WHERE owner = n.node_id) AS runs, "
            "(SELECT count(*) FROM deliveries WHERE owner = n.node_id) AS deliveries, "
            "(SELECT count(*) FROM events WHERE owner = n.node_id) AS events "
            "FROM nodes n ORDER BY started_at, node_id")
        return [_ROWS.node_from(row) for row in rows]

    async def lead(self, name: str) -> bool:
        """A session advisory lock on a connection of its own, held while that session lives: when the node
        dies, or its session does, the lock is free for another to take."""
        conn, leads = self._leads.get(name, (None, False))
        try:
            if conn is None or conn.closed:
                conn, leads = await _connect(self._dsn), False
                self._leads[name] = (conn, False)
            if leads:
                await conn.execute("SELECT 1")  # the session, and so the lock, is still there
                return True
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS got",
                                            (LEADER_LOCK + zlib.crc32(name.encode()),))).fetchone()
        except (psycopg.Error, StartupError):
            if conn is not None:
                await conn.close()
            self._leads.pop(name, None)
            return False
        leads = bool(row and row["got"])
        self._leads[name] = (conn, leads)
        return leads

    async def listen(self, wake: Callable[[str], None]) -> None:
        async with await _connect(self._dsn) as conn:
            await conn.execute("LISTEN feedd")
            async for note in conn.notifies():
                wake(note.payload)
    # Console sessions: every node reads the same ones, so a logout on one ends the session on all.

    async def save_session(self, session: OperatorSession) -> None:
        async with self._connection() as conn:
            await conn.execute("INSERT INTO console_sessions (token_hash, operator, role, password_tag, created_at, "
                               "expires_at) VALUES (%s, %s, %s, %s, %s, %s)",
                               (session.token_hash, session.operator, session.role, session.password_tag,
                                session.created_at, session.expires_at))

    async def get_session(self, token_hash: str, now: datetime) -> OperatorSession | None:
        rows = await self._read("SELECT * FROM console_sessions WHERE token_hash = %s AND expires_at > %s",
                                (token_hash, now))
        return _ROWS.session_from(rows[0]) if rows else None

    async def delete_session(self, token_hash: str) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute("DELETE FROM console_sessions WHERE token_hash = %s", (token_hash,))
            return cur.rowcount == 1

    async def delete_expired_sessions(self, now: datetime) -> int:
        async with self._connection() as conn:
            cur = await conn.execute("DELETE FROM console_sessions WHERE expires_at <= %s", (now,))
            return cur.rowcount

    # --- what the nodes share: bans and bytes used ----------------------------------------------------
    # A ban or an unban takes BAN_LOCK after the address's row lock and holds both to its commit, so that
    # `seq` values commit in order and a node reading changes after a mark never misses one.

    async def login_failed(self, ip: str, now: datetime, *, after: int, within: float,
                           duration: float) -> datetime | None:
        until = None
        async with self._connection() as conn:
            async with conn.transaction():
                # The upsert locks the address's row until the commit: failures from several nodes queue here.
                row = await (await conn.execute(
                    "INSERT INTO bans (ip, updated_at) VALUES (%s, %s) ON CONFLICT (ip) DO UPDATE "
                    "SET updated_at = excluded.updated_at RETURNING failures", (ip, now))).fetchone()
                times = failures_within(row["failures"] if row else None, now, within)
                if len(times) < after:
                    await conn.execute("UPDATE bans SET failures = %s WHERE ip = %s", (json.dumps(times), ip))
                else:
                    until = now + timedelta(seconds=duration)
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (BAN_LOCK,))
                    await conn.execute("UPDATE bans SET failures = '[]', banned_until = %s, seq = nextval('bans_seq') "
                                       "WHERE ip = %s", (until, ip))
            # Rows of addresses long quiet, skipping any another node holds (never waiting on one).
            await conn.execute("DELETE FROM bans WHERE ip IN (SELECT ip FROM bans WHERE updated_at < %s AND "
                               "(banned_until IS NULL OR banned_until < %s) FOR UPDATE SKIP LOCKED)",
                               (now - timedelta(seconds=max(within, BAN_ROWS_KEPT)), now))
        return until

    async def banned_until(self, ip: str, now: datetime) -> datetime | None:
        rows = await self._read("SELECT banned_until FROM bans WHERE ip = %s AND banned_until > %s", (ip, now))
        return _dt(rows[0]["banned_until"]) if rows else None

    async def ban_changes(self, after: int) -> tuple[dict[str, datetime | None], int]:
        rows = await self._read("SELECT ip, banned_until, seq FROM bans WHERE seq > %s ORDER BY seq", (after,))
        return {row["ip"]: _dt(row["banned_until"]) for row in rows}, max([after, *(int(r["seq"]) for r in rows)])

    async def unban(self, ip: str, now: datetime) -> bool:
        async with self._connection() as conn, conn.transaction():
            row = await (await conn.execute("SELECT banned_until FROM bans WHERE ip = %s FOR UPDATE", (ip,))).fetchone()
            if row is None:
                return False
            if row["banned_until"] is None:
                await conn.execute("UPDATE bans SET failures = '[]' WHERE ip = %s", (ip,))
                return False
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (BAN_LOCK,))
            await conn.execute("UPDATE bans SET failures = '[]', banned_until = NULL, updated_at = %s, "
                               "seq = nextval('bans_seq') WHERE ip = %s", (now, ip))
            return bool(row["banned_until"] > now)

    async def space_use(self) -> dict[str, int]:
        rows = await self._read("SELECT connection, used FROM space_use")
        return {row["connection"]: int(row["used"]) for row in rows}

    async def add_space_use(self, deltas: dict[str, int]) -> dict[str, int]:
        names = sorted(deltas)  # rows locked in one order by every node: no deadlock between two
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO space_use AS s (connection, used) SELECT d.connection, greatest(0, d.delta) "
                "FROM unnest(%s::text[], %s::bigint[]) AS d(connection, delta) ORDER BY d.connection "
                "ON CONFLICT (connection) DO UPDATE "
                "SET used = greatest(0, s.used + (%s::bigint[])[array_position(%s::text[], excluded.connection)])",
                (names, [deltas[n] for n in names], [deltas[n] for n in names], names))
            cur = await conn.execute("SELECT connection, used FROM space_use")
            return {row["connection"]: int(row["used"]) for row in await cur.fetchall()}

    async def set_space_use(self, connection: str, used: int) -> None:
        async with self._connection() as conn:
            await conn.execute("INSERT INTO space_use VALUES (%s, %s) ON CONFLICT (connection) DO UPDATE "
                               "SET used = excluded.used", (connection, max(0, used)))

    async def close(self) -> None:
        for conn, _ in self._leads.values():
            with contextlib.suppress(psycopg.Error):
                await conn.close()
        self._leads.clear()
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)
        await self._pool.close()


async def _release(conn: Connection, node_id: str | None) -> TakenOver:
    """Give back the work `node_id` holds and forget the node; with None, the work held by no node recorded
    (runs left `processing` by a process from before nodes were recorded, or by one forgotten)."""
    if node_id is None:
        held = "owner IS NULL OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = t.owner)"
        sent = "owner IS NOT NULL AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = t.owner)"
        params: tuple[str, ...] = ()
    else:
        held = sent = "owner = %s"
        params = (node_id,)
    runs = tuple(sorted(row["run_id"] for row in await (await conn.execute(
        f"UPDATE runs t SET status = 'queued', started_at = NULL, owner = NULL "
        f"WHERE status = 'processing' AND ({held}) RETURNING run_id", params)).fetchall()))
    counts = [(await conn.execute(f"UPDATE {table} t SET owner = NULL WHERE {sent}", params)).rowcount
              for table in ("deliveries", "events")]
    if node_id is not None:
        # its tus uploads' holds too (each holder's name starts with its node's id)
        await conn.execute("UPDATE uploads SET holder = NULL, held_until = NULL WHERE starts_with(holder, %s)",
                           (node_id + "/",))
        await conn.execute("DELETE FROM nodes WHERE node_id = %s", (node_id,))
    return TakenOver(node_id or "", runs, *counts)


async def _configure(conn: Connection) -> None:
    # Timestamps come back in UTC, as feedd writes them.
    await conn.execute("SET TIME ZONE 'UTC'")


async def _version(conn: Connection) -> int:
    cur = await conn.execute("SELECT to_regclass('feedd_schema') IS NOT NULL AS present")
    row = await cur.fetchone()
    if row is None or not row["present"]:
        return 0
    cur = await conn.execute("SELECT version FROM feedd_schema")
    row = await cur.fetchone()
    return int(row["version"]) if row else 0


async def _connect(dsn: str) -> Connection:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        raise StartupError(f"cannot connect to the PostgreSQL store (store.dsn): {exc}".rstrip()) from exc


async def recorded_host_key(dsn: str) -> str | None:
    """The fingerprint of the host key the nodes of this database serve with, once one has started."""
    async with await _connect(dsn) as conn:
        if await _version(conn) == 0:
            return None
        row = await (await conn.execute("SELECT host_key FROM feedd_schema")).fetchone()
        return row["host_key"] if row else None


async def record_host_key(dsn: str, fingerprint: str, *, replace: bool = False) -> str:
    """Record the host key's fingerprint unless one is recorded already (or `replace`); returns the one recorded.

    Partners reach every node under one address, so every node must serve with one key: the first node
    records it, and a node with another key is refused instead of showing partners a changed key.
    """
    keep = "%s" if replace else "coalesce(host_key, %s)"
    async with await _connect(dsn) as conn:
        row = await (await conn.execute(f"UPDATE feedd_schema SET host_key = {keep} RETURNING host_key",
                                        (fingerprint,))).fetchone()
    if row is None:
        raise StartupError("the PostgreSQL store has no schema yet: run `feedd migrate`")
    return str(row["host_key"])


async def migrate(dsn: str) -> tuple[int, int]:
    """Bring the schema up to date; returns (version before, version after).

    Under a session advisory lock: nodes that start together wait for the first to finish, then find the
    schema current. Each step commits with its version, so a step that fails leaves the one before whole.
    """
    try:
        return await _migrate(dsn)
    except psycopg.Error as exc:
        raise StartupError(f"cannot migrate the PostgreSQL store (store.dsn): {exc}".rstrip()) from exc


async def _migrate(dsn: str) -> tuple[int, int]:
    latest = MIGRATIONS[-1][0]
    async with await _connect(dsn) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            before = current = await _version(conn)
            if current > latest:
                raise StartupError(f"the PostgreSQL store's schema is at version {current}, newer than this "
                                   f"feedd knows ({latest}): it was upgraded by a newer feedd")
            for version, sql in MIGRATIONS:
                if version <= current:
                    continue
                async with conn.transaction():
                    if current == 0:
                        await conn.execute("CREATE TABLE feedd_schema (version INTEGER NOT NULL, host_key TEXT)")
                        await conn.execute("INSERT INTO feedd_schema VALUES (0)")
                    await conn.execute(sql)  # no parameters: the whole script goes in one simple query
                    await conn.execute("UPDATE feedd_schema SET version = %s", (version,))
                current = version
        finally:
            # Closing the connection releases the lock too, if it broke on the way.
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return before, current


def _dt(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # from a JSON aggregate
        return datetime.fromisoformat(value)
    return value.astimezone(UTC)


def _same(value: datetime | None) -> datetime | None:
    return value


_ROWS = Rows(encode=_same, decode=_dt)


def _run_from(row: DictRow) -> Run:
    """A run read by _SELECT_RUNS, with the deliveries that came along in its JSON aggregate."""
    return _ROWS.run_from(row, tuple(_ROWS.delivery(row["run_id"], *values) for values in row["deliveries_json"]))


def _upload_from(row: DictRow) -> Upload:
    return _ROWS.upload_from(row, row["parts_json"])


def _with_swept(meta: str, part: SweptPart) -> str:
    """The run's meta with `swept.<part>` true, as SQLite's json_set writes it: `swept` made if it is not
    there, left as it is if it is there and not an object."""
    value = json.loads(meta)
    marks = value.setdefault("swept", {})
    if isinstance(marks, dict):
        marks[part.value] = True
    return json.dumps(value)



# mypy checks here, where the class is, that PostgresStore has every method of the Store protocol.
_STORE: type[Store] = PostgresStore
