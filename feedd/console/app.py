"""The operator console at `/ui/`: login, sessions, CSRF, and every page (README, "Console").

Pages are rendered on the server with Jinja2; htmx (vendored in static/) only refreshes parts of a page,
so every form also works with JavaScript off. Handlers hold no rules of their own: they read through the
store's bounded queries and change things through the same code the HTTP API calls (`acknowledge`, the
runner's `retry`, `switch_active`, the config owner's `create`/`update`). A `viewer` operator is refused
every change on the server (403), whatever the page shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import jinja2
from aiohttp import web

from feedd import arrivals, log
from feedd.cluster import shared
from feedd.config import Config
from feedd.config.values import Operator
from feedd.console import charts
from feedd.console.sessions import COOKIE, LOGIN_COOKIE, Session, Sessions, same_token
from feedd.errors import ConflictError, FeeddError, NotFoundError
from feedd.http.api import ApiError, row_cursor
from feedd.http.manage import Releaser, cluster_view, switch_active
from feedd.http.runs import Retrier, acknowledge, run_file
from feedd.http.views import pipeline_view
from feedd.live import InvalidObject, Live, Source, StaleVersion
from feedd.model import DeliveryStatus, ObjectKind, Run, RunStatus, id_floor, utcnow
from feedd.sftp.auth import FAILURE_DELAY, Bans, escaped, verify_queued
from feedd.spaces import Spaces
from feedd.store import RunQuery, Store

HERE = Path(__file__).parent
PAGE = 50  # runs or audit entries per page
LIST_FILES = 200  # files shown per inbox/ or outbox/
REJECTED_ROWS = 20  # rejected rows shown on a run's page
CHART_DAYS = 14
OVERVIEW_FRESH = 0.25  # seconds the overview table's numbers are shared between requests
_ID = re.compile(r"[0-9A-Z]{26}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


class ReviewService(Protocol):
    """The review loop's service (the same one the HTTP API calls): what the review page needs of it."""

    async def sample(self, run: Run) -> dict[str, Any]: ...

    async def preview(self, run: Run, mapping: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    async def approve(self, run: Run, actor: str, mapping: Mapping[str, Any] | None = None,
                      remember: bool = False) -> Run: ...

    async def reject(self, run: Run, actor: str, message: str) -> Run: ...


@dataclass(frozen=True, slots=True)
class ConsoleParts:
    """What the daemon lends the console: the bans SFTP uses, the spaces, who is logged in over SFTP, and
    which node this is."""

    bans: Bans
    spaces: Spaces | None = None
    logins: Callable[[], list[tuple[str, str, float]]] = list
    node: str = ""


@dataclass(frozen=True, slots=True)
class Who:
    operator: Operator
    session: Session


class Refused(Exception):
    """A page answer other than the page: 403, 404, 409 with a message for a person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Page = Callable[["Console", web.Request, Who], Awaitable[web.StreamResponse]]


class Console:
    def __init__(self, live: Any, store: Store, parts: ConsoleParts, owner: Live | None,
                 runs: Retrier | None, releaser: Releaser | None, reviews: ReviewService | None = None) -> None:
        self._live = live
        self._reviews = reviews
        self._store = store
        self._parts = parts
        self._owner = owner
        self._runs = runs
        self._releaser = releaser
        self.sessions = Sessions(store)
        self._overview: tuple[float, dict[str, Any]] | None = None
        self._env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                       autoescape=True)
        self._env.filters["when"] = _when
        self._env.filters["bytes"] = _bytes

    @property
    def config(self) -> Config:
        return self._live.config  # type: ignore[no-any-return]

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/ui", self._to_ui)
        r.add_static("/ui/static/", HERE / "static", append_version=False)
        r.add_get("/ui/login", self.login_form)
        r.add_post("/ui/login", self.login)
        r.add_post("/ui/logout", self.logout)
        pages: list[tuple[str, str, Page]] = [
            ("GET", "/ui/", Console.overview),
            ("GET", "/ui/overview/table", Console.overview_table),
            ("GET", "/ui/runs", Console.runs_page),
            ("GET", "/ui/runs/{runId}", Console.run_page),
            ("GET", "/ui/runs/{runId}/review", Console.review_page),
            ("POST", "/ui/runs/{runId}/review/preview", Console.review_preview),
            ("POST", "/ui/runs/{runId}/review/approve", Console.review_approve),
            ("POST", "/ui/runs/{runId}/review/reject", Console.review_reject),
            ("GET", "/ui/runs/{runId}/records", Console.download),
            ("GET", "/ui/runs/{runId}/rejects", Console.download),
            ("POST", "/ui/runs/{runId}/ack", Console.ack),
            ("POST", "/ui/runs/{runId}/retry", Console.retry),
            ("GET", "/ui/connections", Console.connections_page),
            ("GET", "/ui/connections/new", Console.connection_form),
            ("POST", "/ui/connections/new", Console.connection_save),
            ("GET", "/ui/connections/{name}", Console.connection_page),
            ("GET", "/ui/connections/{name}/edit", Console.connection_form),
            ("POST", "/ui/connections/{name}/edit", Console.connection_save),
            ("POST", "/ui/bans/unban", Console.unban),
            ("GET", "/ui/pipelines", Console.pipelines_page),
            ("GET", "/ui/pipelines/{name}", Console.pipeline_page),
            ("POST", "/ui/pipelines/{name}/active", Console.pipeline_active),
            ("GET", "/ui/audit", Console.audit_page),
            ("GET", "/ui/nodes", Console.nodes_page),
        ]
        for method, path, page in pages:
            r.add_route(method, path, self._guarded(page))

    # Sessions, CSRF, roles

    def _guarded(self, page: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            if not self.config.http.console:
                return self._plain(404, "the console is turned off (http.console: false)")
            who = await self._who(request)
            if who is None:
                if request.method == "POST":
                    return self._plain(403, "not logged in (or the session has expired)")
                if request.headers.get("HX-Request"):
                    # htmx follows redirects into the target; this tells it to load the login page whole
                    return web.Response(status=204, headers={"HX-Redirect": "/ui/login"})
                raise web.HTTPSeeOther(f"/ui/login?next={_local(request.path_qs)}")
            try:
                if request.method == "POST":
                    form = await request.post()
                    if not same_token(_text(form.get("csrf")), who.session.csrf):
                        return self._plain(403, "the form's CSRF token is missing or wrong: reload the page")
                    if not who.operator.admin:
                        raise Refused(403, f"operator {who.operator.name!r} is a viewer and may not change "
                                           f"anything")
                response = await page(self, request, who)
            except Refused as exc:
                response = self._render(request, who, "error.html", {"message": exc.message}, exc.status)
            except ApiError as exc:
                response = self._render(request, who, "error.html", {"message": exc.message}, exc.status)
            response.headers.update(_SECURITY_HEADERS)
            return response

        return handler

    async def _who(self, request: web.Request) -> Who | None:
        session = await self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        # The operator as the config says now: one removed (or whose role or password changed) at a reload is
        # seen at once, on every node that has reloaded.
        operator = next((o for o in self.config.http.operators if o.name == session.operator), None)
        return Who(operator, session) if operator is not None and session.opened_by(operator) else None

    def _plain(self, status: int, message: str) -> web.Response:
        return web.Response(status=status, text=message + "\n", headers=_SECURITY_HEADERS)

    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: float | None) -> None:
        response.set_cookie(name, value, path="/ui", httponly=True, samesite="Strict",
                            secure=self.config.http.tls is not None,
                            max_age=None if max_age is None else int(max_age))

    async def _to_ui(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/ui/")

    async def login_form(self, request: web.Request, message: str | None = None,
                         status: int = 200) -> web.StreamResponse:
        if not self.config.http.console:
            return self._plain(404, "the console is turned off (http.console: false)")
        token = request.cookies.get(LOGIN_COOKIE) or os.urandom(24).hex()
        response = self._render(request, None, "login.html", {
            "csrf": token, "message": message, "next": _local(request.query.get("next", "/ui/")),
            "no_operators": not self.config.http.operators}, status)
        self._cookie(response, LOGIN_COOKIE, token, None)
        response.headers.update(_SECURITY_HEADERS)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not self.config.http.console:
            return self._plain(404, "the console is turned off (http.console: false)")
        form = await request.post()
        expected = request.cookies.get(LOGIN_COOKIE)
        if not expected or not same_token(_text(form.get("csrf")), expected):
            return self._plain(403, "the form's CSRF token is missing or wrong: reload the login page")
        ip = request.remote or "?"
        bans = self._parts.bans
        if await bans.check(ip):
            log.get().warning("console.refused_banned", ip=ip)
            return await self.login_form(request, "Too many failed logins from your address: try again later.", 403)
        name = _text(form.get("name")) or ""
        password = _text(form.get("password")) or ""
        operator = next((o for o in self.config.http.operators if o.name == name), None)
        phc = operator.password_hash if operator is not None else None
        ok = bool(password) and await verify_queued(phc, password) and operator is not None
        if not ok or operator is None:
            banned = await bans.fail(ip)
            who = "operator" if operator is not None else "unknown operator"
            log.get().warning("console.auth_failed", ip=ip, user=escaped(name), method="password",
                              message=f"Failed password from {ip} for {who} '{escaped(name)}'")
            if banned:
                log.get().warning("console.banned", ip=ip, seconds=self.config.sftp.ban.duration,
                                  message=f"Banned {ip}")
            await asyncio.sleep(FAILURE_DELAY)
            return await self.login_form(request, "Wrong name or password.", 401)
        token, _session = await self.sessions.start(operator, self.config.http.session_ttl)
        log.get().info("console.login", operator=operator.name, ip=ip, role=str(operator.role))
        response = web.HTTPSeeOther(_local(_text(form.get("next")) or "/ui/"))
        self._cookie(response, COOKIE, token, self.config.http.session_ttl)
        response.del_cookie(LOGIN_COOKIE, path="/ui")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        who = await self._who(request)
        form = await request.post()
        if who is not None:
            if not same_token(_text(form.get("csrf")), who.session.csrf):
                return self._plain(403, "the form's CSRF token is missing or wrong: reload the page")
            await self.sessions.end(request.cookies.get(COOKIE))
            log.get().info("console.logout", operator=who.operator.name)
        response = web.HTTPSeeOther("/ui/login")
        response.del_cookie(COOKIE, path="/ui")
        raise response

    def _render(self, request: web.Request, who: Who | None, template: str, values: dict[str, Any],
                status: int = 200) -> web.Response:
        context = {"who": who, "csrf": who.session.csrf if who else values.get("csrf"),
                   "can_change": who is not None and who.operator.admin, "path": request.path, **values}
        text = self._env.get_template(template).render(context)
        return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")

    # Overview

    async def _overview_values(self) -> dict[str, Any]:
        """The overview's numbers and chart, refreshed together; shared by every console for OVERVIEW_FRESH
        seconds, so that many open consoles refreshing every second cost the store the same as one."""
        cached = self._overview
        if cached is not None and time.monotonic() - cached[0] < OVERVIEW_FRESH:
            return cached[1]
        now = utcnow()
        values = {"now": now, "rows": await self._overview_rows(now), "chart": await self._chart(now, None)}
        self._overview = (time.monotonic(), values)
        return values

    async def _overview_rows(self, now: datetime) -> list[dict[str, Any]]:
        since = id_floor(now - timedelta(hours=24))
        names = sorted(self.config.connections)
        recent: dict[str, dict[str, int]] = {n: {} for n in names}
        for conn, status, count in await self._store.run_counts(since):
            recent.setdefault(conn, {})
            recent[conn][status] = recent[conn].get(status, 0) + count
        failing = await self._store.failing_deliveries(since)
        review = await self._store.count_by_connection(RunStatus.NEEDS_REVIEW)
        last = await self._store.last_arrivals(names)
        missed: dict[str, int] = {}
        for pipe in self.config.pipelines.values():  # windows missed in the last 24 hours, per partner
            if pipe.expect is not None and (state := await self._store.arrival_state(pipe.name)) is not None:
                recent_missed = sum(1 for m in state.missed if m.expected_by >= now - timedelta(hours=24))
                missed[pipe.connection] = missed.get(pipe.connection, 0) + recent_missed
        return [{"name": n, "last": last.get(n), "recent": recent.get(n, {}), "failing": failing.get(n, 0),
                 "review": review.get(n, 0), "failed": recent.get(n, {}).get("failed", 0),
                 "missed": missed.get(n, 0)} for n in names]

    async def _chart(self, now: datetime, connection: str | None) -> charts.Chart:
        first = charts.first_day(now, CHART_DAYS)
        return charts.runs_per_day(await self._store.runs_per_day(first, CHART_DAYS, connection), now, CHART_DAYS)

    async def overview(self, request: web.Request, who: Who) -> web.StreamResponse:
        return self._render(request, who, "overview.html", await self._overview_values())

    async def overview_table(self, request: web.Request, who: Who) -> web.StreamResponse:
        return self._render(request, who, "overview_table.html", await self._overview_values())

    # Runs

    async def runs_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        q = request.query
        status = q.get("status") or None
        if status is not None and status not in {str(s) for s in RunStatus}:
            raise Refused(400, f"unknown status {status!r}")
        cursor = q.get("cursor") or None
        if cursor is not None and not _ID.fullmatch(cursor):
            raise Refused(400, "bad cursor")
        day_from, day_to = q.get("from") or None, q.get("to") or None
        for day in (day_from, day_to):
            if day is not None and not _DAY.fullmatch(day):
                raise Refused(400, f"bad date {day!r}: expected YYYY-MM-DD")
        query = RunQuery(
            connection=q.get("connection") or None, pipeline=q.get("pipeline") or None,
            statuses=(RunStatus(status),) if status else (), limit=PAGE, cursor=cursor,
            since_id=id_floor(_day(day_from)) if day_from else None,
            until_id=id_floor(_day(day_to) + timedelta(days=1)) if day_to else None,
            name=(q.get("name") or "").strip()[:200] or None,
            delivery_failed=True if q.get("failing") == "1" else None)
        runs, next_cursor = await self._store.list_runs(query)
        filters = {k: q.get(k, "") for k in ("connection", "pipeline", "status", "from", "to", "name", "failing")}
        return self._render(request, who, "runs.html", {
            "runs": runs, "next_cursor": next_cursor, "filters": filters,
            "next_query": _query({**filters, "cursor": next_cursor or ""}),
            "statuses": [str(s) for s in RunStatus], "connections": sorted(self.config.connections),
            "pipelines": sorted(self.config.pipelines)})

    async def _run(self, request: web.Request) -> Run:
        run_id = request.match_info["runId"]
        run = await self._store.get_run(run_id) if _ID.fullmatch(run_id) else None
        if run is None:
            raise Refused(404, f"no run {run_id!r}")
        return run

    async def run_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        run = await self._run(request)
        rejects = await asyncio.to_thread(_first_rejects, run.meta.get("rejects"), REJECTED_ROWS)
        reasons = run.meta.get("mapping_reasons") or {}
        status = str(run.status)
        has_records = bool(run.meta.get("records_jsonl") or run.meta.get("records")) and status in (
            "completed", "delivered")
        return self._render(request, who, "run.html", {
            "run": run, "status": status, "timeline": _timeline(run), "reasons": reasons, "rejects": rejects,
            "has_records": has_records, "has_rejects": bool(run.meta.get("rejects")) and run.counts.invalid > 0
            and status in ("completed", "delivered", "failed", "needs_review"),
            "can_retry": status in ("completed", "delivered")
            and any(d.status is DeliveryStatus.FAILED for d in run.deliveries),
            "can_reprocess": status in ("completed", "delivered", "failed"),
            "review": run.meta.get("review"), "flash": request.query.get("done")})

    async def review_page(self, request: web.Request, who: Who, chosen: dict[str, str] | None = None,
                          preview: dict[str, Any] | None = None, errors: list[dict[str, str]] | None = None,
                          message: str = "", status: int = 200) -> web.StreamResponse:
        """A run waiting for a person: its first rows, a header per schema field (the suggestion chosen
        first), a preview of what a mapping gives, and the decision. Without the review service (or for a
        run not waiting), only why it was sent to review."""
        run = await self._run(request)
        values: dict[str, Any] = {"run": run, "status": str(run.status), "review": run.meta.get("review"),
                                  "sample": None, "fields": [], "preview": preview, "errors": errors or [],
                                  "message": message}
        if self._reviews is not None and run.status is RunStatus.NEEDS_REVIEW:
            try:
                sample = await self._reviewing(self._reviews.sample(run))
            except FeeddError as exc:  # e.g. the input is gone from the spool
                raise Refused(409, str(exc)) from None
            pipe = self.config.pipelines.get(run.pipeline or "")
            schema = self.config.schemas.get(pipe.schema) if pipe is not None else None
            suggestions = sample.get("suggestions") or {}
            unmapped = sample.get("unmapped") or {}
            fields = []
            for spec in schema.fields if schema is not None else ():
                hint = suggestions.get(spec.name) or {}
                selected = chosen.get(spec.name, "") if chosen is not None else (hint.get("source") or "")
                fields.append({"name": spec.name, "type": str(spec.type), "required": spec.required,
                               "selected": selected, "hint": hint,
                               "closest": (unmapped.get(spec.name) or {}).get("closest") or []})
            values.update(sample=sample, fields=fields)
        return self._render(request, who, "review.html", values, status)

    async def _reviewing(self, pending: Awaitable[Any]) -> Any:
        """The service's answer, its refusals as pages."""
        try:
            return await pending
        except (ConflictError, NotFoundError) as exc:
            raise Refused(409 if isinstance(exc, ConflictError) else 404, str(exc)) from None

    def _review_form(self, form: Any) -> dict[str, str]:
        """field -> header chosen (fields left on "not mapped" are left out)."""
        return {key[4:]: value for key, value in form.items()
                if isinstance(key, str) and key.startswith("map.") and isinstance(value, str) and value}

    async def review_preview(self, request: web.Request, who: Who) -> web.StreamResponse:
        if self._reviews is None:
            raise Refused(409, "reviews are not available here")
        run = await self._run(request)
        chosen = self._review_form(await request.post())
        try:
            preview = await self._reviewing(self._reviews.preview(run, chosen))
        except FeeddError as exc:
            return await self.review_page(request, who, chosen, None, _details(exc), status=422)
        return await self.review_page(request, who, chosen, preview)

    async def review_approve(self, request: web.Request, who: Who) -> web.StreamResponse:
        if self._reviews is None:
            raise Refused(409, "reviews are not available here")
        run = await self._run(request)
        form = await request.post()
        chosen = self._review_form(form)
        try:
            await self._reviewing(self._reviews.approve(run, who.operator.name, chosen,
                                                        remember=_text(form.get("remember")) == "1"))
        except FeeddError as exc:
            return await self.review_page(request, who, chosen, None, _details(exc), status=422)
        raise web.HTTPSeeOther(f"/ui/runs/{run.run_id}?done=approved")

    async def review_reject(self, request: web.Request, who: Who) -> web.StreamResponse:
        if self._reviews is None:
            raise Refused(409, "reviews are not available here")
        run = await self._run(request)
        message = _text((await request.post()).get("message")) or ""
        try:
            await self._reviewing(self._reviews.reject(run, who.operator.name, message))
        except FeeddError as exc:
            return await self.review_page(request, who, None, None, _details(exc), message, status=422)
        raise web.HTTPSeeOther(f"/ui/runs/{run.run_id}?done=rejected")

    async def download(self, request: web.Request, who: Who) -> web.StreamResponse:
        run = await self._run(request)
        what = request.path.rsplit("/", 1)[1]
        response = run_file(run, what)
        response.headers["Content-Disposition"] = f'attachment; filename="{run.run_id}.{what}.ndjson"'
        return response

    async def ack(self, request: web.Request, who: Who) -> web.StreamResponse:
        run = await acknowledge(self._store, await self._run(request))
        log.get().info("console.ack", operator=who.operator.name, run_id=run.run_id)
        raise web.HTTPSeeOther(f"/ui/runs/{run.run_id}?done=acknowledged")

    async def retry(self, request: web.Request, who: Who) -> web.StreamResponse:
        run = await self._run(request)
        form = await request.post()
        reprocess = _text(form.get("reprocess")) == "1"
        if self._runs is None:
            raise Refused(409, "this daemon runs no workers, so nothing can be retried")
        try:
            run = await self._runs.retry(run, reprocess=reprocess)
        except ValueError as exc:
            raise Refused(409, str(exc)) from None
        log.get().info("console.retry", operator=who.operator.name, run_id=run.run_id, reprocess=reprocess)
        raise web.HTTPSeeOther(f"/ui/runs/{run.run_id}?done={'reprocessing' if reprocess else 'retrying'}")

    # Connections

    def _owned(self) -> Live:
        if self._owner is None:
            raise Refused(503, "objects cannot be managed here")
        return self._owner

    async def connections_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        owner = self._owner
        rows = []
        for name, conn in sorted(self.config.connections.items()):
            space = self._parts.spaces.get(name) if self._parts.spaces else None
            source = owner.source_of(ObjectKind.CONNECTION, name) if owner else Source.FILE
            rows.append({"conn": conn, "used": space.used if space else None, "source": str(source)})
        bans = sorted(self._parts.bans.banned().items())
        return self._render(request, who, "connections.html", {
            "rows": rows, "bans": bans, "sessions": self._parts.logins(), "managed": owner is not None})

    async def connection_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        name = request.match_info["name"]
        conn = self.config.connections.get(name)
        if conn is None:
            raise Refused(404, f"no connection {name!r}")
        space = self._parts.spaces.get(name) if self._parts.spaces else None
        inbox, outbox = await asyncio.to_thread(
            lambda: (_files(space.inbox if space else None), _files(space.outbox if space else None)))
        now = utcnow()
        shown = self._owner.get(ObjectKind.CONNECTION, name) if self._owner else None
        return self._render(request, who, "connection.html", {
            "conn": conn, "used": space.used if space else None, "inbox": inbox, "outbox": outbox,
            "sessions": [s for s in self._parts.logins() if s[0] == name],
            "pipelines": [p for p in self.config.pipelines.values() if p.connection == name],
            "source": str(shown.source) if shown else "file",
            "body": json.dumps(shown.body, indent=2) if shown else "",
            "chart": await self._chart(now, name)})

    async def connection_form(self, request: web.Request, who: Who, errors: list[dict[str, str]] | None = None,
                              values: dict[str, Any] | None = None, status: int = 200) -> web.StreamResponse:
        name = request.match_info.get("name")
        if values is None:
            values = {"name": name or "", "enabled": True, "authorized_keys": "", "allowed_ips": "",
                      "quota": "", "max_file_size": ""}
            if name is not None:
                values.update(_form_values(self._editable(name).body))
        return self._render(request, who, "connection_form.html", {
            "name": name, "values": values, "errors": errors or []}, status)

    def _editable(self, name: str) -> Any:
        shown = self._owned().get(ObjectKind.CONNECTION, name)
        if shown is None:
            raise Refused(404, f"no connection {name!r}")
        if shown.source is Source.FILE:
            raise Refused(409, f"connection {name!r} is defined in the config file: change it there and reload")
        return shown

    async def connection_save(self, request: web.Request, who: Who) -> web.StreamResponse:
        name = request.match_info.get("name")
        form = await request.post()
        fields = ("name", "password", "authorized_keys", "allowed_ips", "quota", "max_file_size")
        values: dict[str, Any] = {k: _text(form.get(k)) or "" for k in fields}
        values["enabled"] = _text(form.get("enabled")) == "1"
        body: dict[str, Any] = {"enabled": values["enabled"]}
        for key in ("authorized_keys", "allowed_ips"):
            lines = [line.strip() for line in values[key].splitlines() if line.strip()]
            body[key] = lines or None
        for key in ("quota", "max_file_size"):
            body[key] = values[key].strip() or None
        if values["password"]:
            body["password"] = values["password"]
        values["password"] = ""  # never sent back into the page
        owner = self._owned()
        try:
            if name is None:
                new = values["name"].strip()
                if not new:
                    raise InvalidObject("name: required", [{"path": "name", "message": "required"}])
                await owner.create(ObjectKind.CONNECTION, new, {k: v for k, v in body.items() if v is not None},
                                   who.operator.name)
                name = new
            else:
                self._editable(name)
                await owner.update(ObjectKind.CONNECTION, name, body, who.operator.name)
        except InvalidObject as exc:
            return await self.connection_form(request, who, exc.details, values, 422)
        except (ConflictError, NotFoundError, StaleVersion) as exc:
            return await self.connection_form(request, who, [{"path": "", "message": str(exc)}], values, 409)
        log.get().info("console.connection_saved", operator=who.operator.name, connection=name)
        raise web.HTTPSeeOther(f"/ui/connections/{name}")

    async def unban(self, request: web.Request, who: Who) -> web.StreamResponse:
        form = await request.post()
        ip = _text(form.get("ip")) or ""
        if await self._parts.bans.unban(ip):
            log.get().warning("console.unban", operator=who.operator.name, ip=ip)
        raise web.HTTPSeeOther("/ui/connections")

    # Pipelines

    async def pipelines_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        active = await self._store.pipeline_overrides()
        rows = [{"pipe": p, "active": active.get(p.name, p.active),
                 "source": str(self._owner.source_of(ObjectKind.PIPELINE, p.name)) if self._owner else "file"}
                for p in sorted(self.config.pipelines.values(), key=lambda p: p.name)]
        return self._render(request, who, "pipelines.html", {"rows": rows})

    async def pipeline_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        name = request.match_info["name"]
        pipe = self.config.pipelines.get(name)
        if pipe is None:
            raise Refused(404, f"no pipeline {name!r}")
        active = (await self._store.pipeline_overrides()).get(name, pipe.active)
        held, _ = await self._store.list_runs(RunQuery(pipeline=name, statuses=(RunStatus.HELD,), limit=20))
        return self._render(request, who, "pipeline.html", {
            "pipe": pipe, "view": pipeline_view(pipe, active), "active": active, "held": held,
            "arrivals": await arrivals.shown(self._store, pipe, utcnow()),
            "schema": self.config.schemas.get(pipe.schema), "flash": request.query.get("done")})

    async def pipeline_active(self, request: web.Request, who: Who) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.config.pipelines:
            raise Refused(404, f"no pipeline {name!r}")
        form = await request.post()
        active = _text(form.get("active")) == "1"
        released = await switch_active(self._store, self._releaser, name, active)
        log.get().info("console.pipeline_active", operator=who.operator.name, pipeline=name, active=active,
                       released=released)
        raise web.HTTPSeeOther(f"/ui/pipelines/{name}?done={'activated' if active else 'deactivated'}")

    # Audit

    async def audit_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        try:
            cursor = row_cursor(request.query.get("cursor"))
        except ApiError as exc:
            raise Refused(400, exc.message) from None
        entries, next_cursor = await self._store.list_audit(PAGE, cursor)
        return self._render(request, who, "audit.html", {
            "entries": [(e, json.dumps(e.before, indent=1) if e.before else "",
                         json.dumps(e.after, indent=1) if e.after else "") for e in entries],
            "next_cursor": next_cursor})


    # Nodes

    async def nodes_page(self, request: web.Request, who: Who) -> web.StreamResponse:
        view = cluster_view(self.config, await self._store.nodes(), self._parts.node)
        return self._render(request, who, "nodes.html", {"view": view, "shared": shared(self.config)})


def _details(exc: Exception) -> list[dict[str, str]]:
    details = getattr(exc, "details", None)
    return details if isinstance(details, list) and details else [{"path": "", "message": str(exc)}]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _local(target: str) -> str:
    """A redirect target inside the console only (never another site)."""
    return target if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target else "/ui/"


def _query(values: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in values.items() if v})


def _day(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _timeline(run: Run) -> list[tuple[str, datetime]]:
    """The statuses a run went through, as far as its timestamps tell."""
    steps: list[tuple[str, datetime | None]] = [("received", run.created_at), ("processing", run.started_at)]
    if run.finished_at is not None:
        steps.append(("failed" if run.status is RunStatus.FAILED else "completed", run.finished_at))
    delivered = [d.delivered_at for d in run.deliveries if d.delivered_at is not None]
    if run.status is RunStatus.DELIVERED and delivered:
        steps.append(("delivered", max(delivered)))
    steps.append(("acknowledged", run.acknowledged_at))
    return [(name, at) for name, at in steps if at is not None]


def _first_rejects(path: Any, limit: int) -> list[dict[str, Any]]:
    if not path:
        return []
    out: list[dict[str, Any]] = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if len(out) >= limit:
                break
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _files(folder: Path | None) -> list[tuple[str, int]]:
    """The first LIST_FILES files below `folder` (relative name, size)."""
    if folder is None:
        return []
    out: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if len(out) >= LIST_FILES:
                return out
            full = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                out.append((os.path.relpath(full, folder), os.lstat(full).st_size))
    return out


def _form_values(body: dict[str, Any]) -> dict[str, Any]:
    keys = body.get("authorized_keys") or []
    ips = body.get("allowed_ips") or []
    return {"enabled": body.get("enabled", True) is not False,
            "authorized_keys": "\n".join(keys) if isinstance(keys, list) else str(keys),
            "allowed_ips": "\n".join(ips) if isinstance(ips, list) else str(ips),
            "quota": str(body.get("quota") or ""), "max_file_size": str(body.get("max_file_size") or "")}

