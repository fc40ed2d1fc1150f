"""The runs API: list (filters, cursor pages), get, records and rejects (streamed files), ack, retry; and
the events list (`GET /events`) for admin keys.

A key sees only the runs of its connections. Records and rejects are files the worker wrote; they are
sent as they are (sendfile), so memory stays the same whatever their size. Status changes (retry,
reprocess) are the runner's business: this module asks it.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from feedd.config.values import ApiKey
from feedd.http.api import (
    ApiError,
    Routes,
    authenticate,
    field,
    json_body,
    query_boolean,
    query_integer,
    require_admin,
    require_connection,
    row_cursor,
)
from feedd.model import DeliveryStatus, Event, Run, RunStatus, iso, utcnow
from feedd.store import RunQuery, Store

MAX_LIMIT = 1000
_ID = re.compile(r"[0-9A-Z]{26}")
NDJSON = "application/x-ndjson"


class Retrier(Protocol):
    async def retry(self, run: Run, *, reprocess: bool) -> Run:
        """Re-deliver what failed, or process the input again; raises ValueError when the state forbids it."""


class RunsApi(Routes):
    def __init__(self, live: Any, store: Store, retrier: Retrier | None) -> None:
        super().__init__(live, store)
        self._retrier = retrier


    def routes(self, app: web.Application) -> None:
        app.router.add_get("/runs", self.list)
        app.router.add_get("/runs/{runId}", self.get)
        app.router.add_get("/runs/{runId}/records", self.records)
        app.router.add_get("/runs/{runId}/rejects", self.rejects)
        app.router.add_post("/runs/{runId}/ack", self.ack)
        app.router.add_post("/runs/{runId}/retry", self.retry)

    async def list(self, request: web.Request) -> web.Response:
        key = authenticate(request, self.config)
        q = request.query
        statuses: tuple[RunStatus, ...] = ()
        if q.get("status"):
            try:
                statuses = tuple(RunStatus(s.strip()) for s in q["status"].split(",") if s.strip())
            except ValueError:
                raise ApiError(400, "invalid_query", f"status: expected one or more of "
                                                     f"{', '.join(RunStatus)} (comma-separated)") from None
        acknowledged = query_boolean(q.get("acknowledged"), "acknowledged")
        delivery_failed = query_boolean(q.get("deliveryFailed"), "deliveryFailed")
        limit = query_integer(q.get("limit"), "limit", 1, MAX_LIMIT, 100)
        cursor = q.get("cursor") or None
        if cursor is not None and not _ID.fullmatch(cursor):
            raise ApiError(400, "invalid_query", "cursor: expected the nextCursor of an earlier page")
        connection = q.get("connection") or None
        if connection is not None:
            require_connection(key, connection)
        runs, next_cursor = await self._store.list_runs(RunQuery(
            connection=connection, pipeline=q.get("pipeline") or None, statuses=statuses, acknowledged=acknowledged,
            connections=_visible(key), limit=limit, cursor=cursor, delivery_failed=delivery_failed))
        return web.json_response({"data": [run_json(r) for r in runs], "nextCursor": next_cursor})

    async def _run(self, request: web.Request) -> Run:
        key = authenticate(request, self.config)
        run_id = request.match_info["runId"]
        run = await self._store.get_run(run_id) if _ID.fullmatch(run_id) else None
        if run is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        require_connection(key, run.connection)
        return run

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(run_json(await self._run(request)))

    async def records(self, request: web.Request) -> web.StreamResponse:
        run = await self._run(request)
        return _file(run, run.meta.get("records_jsonl") or run.meta.get("records"), "records")

    async def rejects(self, request: web.Request) -> web.StreamResponse:
        run = await self._run(request)
        return _file(run, run.meta.get("rejects"), "rejects")

    async def ack(self, request: web.Request) -> web.Response:
        return web.json_response(run_json(await acknowledge(self._store, await self._run(request))))

    async def retry(self, request: web.Request) -> web.Response:
        run = await self._run(request)
        body = await json_body(request, optional=True)
        reprocess = bool(field(body, "reprocess", bool, required=False))
        if self._retrier is None:
            raise ApiError(409, "wrong_state", "this daemon runs no workers, so nothing can be retried")
        try:
            run = await self._retrier.retry(run, reprocess=reprocess)
        except ValueError as exc:
            raise ApiError(409, "wrong_state", str(exc)) from None
        return web.json_response(run_json(run))


class EventsApi(Routes):
    """`GET /events?status=&limit=&cursor=`: the webhook events, newest first, for admin keys (events are not
    tied to one connection)."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/events", self.list)

    async def list(self, request: web.Request) -> web.Response:
        require_admin(authenticate(request, self.config))
        q = request.query
        status: DeliveryStatus | None = None
        if q.get("status"):
            try:
                status = DeliveryStatus(q["status"])
            except ValueError:
                raise ApiError(400, "invalid_query",
                               f"status: expected one of {', '.join(DeliveryStatus)}") from None
        limit = query_integer(q.get("limit"), "limit", 1, MAX_LIMIT, 100)
        found, next_cursor = await self._store.list_events(status, limit, row_cursor(q.get("cursor")))
        return web.json_response({"data": [event_json(e) for e in found], "nextCursor": next_cursor})


async def acknowledge(store: Store, run: Run) -> Run:
    """Mark a run acknowledged (once: a second ack keeps the first time)."""
    if run.acknowledged_at is None:
        run = replace(run, acknowledged_at=utcnow())
        await store.update_run(run)
    return run


def run_json(run: Run) -> dict[str, Any]:
    """A run as the API shows it: with `deliveryFailed`, true when a delivery has failed for good."""
    return {**run.to_json(), "deliveryFailed": any(d.status is DeliveryStatus.FAILED for d in run.deliveries)}


def event_json(event: Event) -> dict[str, Any]:
    try:
        payload = json.loads(event.body)
    except ValueError:
        payload = None
    return {"eventId": event.event_id, "url": event.url, "type": event.type, "status": str(event.status),
            "attempts": event.attempts, "lastError": event.last_error,
            "nextAttemptAt": iso(event.next_attempt_at), "createdAt": iso(event.created_at),
            "data": payload.get("data") if isinstance(payload, dict) else None}


def run_file(run: Run, what: str) -> web.StreamResponse:
    """The run's `records` or `rejects` file as NDJSON; ApiError 409 when it has none to read."""
    path = run.meta.get("records_jsonl") or run.meta.get("records") if what == "records" else run.meta.get("rejects")
    return _file(run, path, what)


def _file(run: Run, path: Any, what: str) -> web.StreamResponse:
    if run.swept("outputs"):
        raise ApiError(410, "swept", f"run {run.run_id}: its {what} were deleted by retention")
    # a run waiting for review shows its rejects (what a reviewer looks at), not its records (not output)
    if run.status not in (RunStatus.COMPLETED, RunStatus.DELIVERED, RunStatus.FAILED, RunStatus.NEEDS_REVIEW) \
            or not path or not Path(path).is_file():
        raise ApiError(409, "not_ready", f"run {run.run_id} is {run.status} and has no {what} to read")
    if what == "records" and run.status in (RunStatus.FAILED, RunStatus.NEEDS_REVIEW):
        raise ApiError(409, "not_ready", f"run {run.run_id} is {run.status}: its records are not output")
    return web.FileResponse(Path(path), headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})


def _visible(key: ApiKey) -> frozenset[str] | None:
    return None if "*" in key.connections else frozenset(key.connections)
