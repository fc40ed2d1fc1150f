"""Connections, schemas and pipelines over the API: list and read both sources (the file's and the store's),
create, change and delete the store's (admin keys), the runtime `active` switch of any pipeline, and the
audit log of every change. The config in force owns the objects; this module only translates HTTP."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

from aiohttp import web

from feedd import arrivals
from feedd.config.values import ApiKey, Config
from feedd.http.api import (
    ApiError,
    Routes,
    authenticate,
    field,
    json_body,
    query_integer,
    require_admin,
    require_connection,
    row_cursor,
    translated,
)
from feedd.http.views import connection_view, pipeline_view
from feedd.live import Live, Outcome, Shown
from feedd.model import Node, ObjectKind, iso, utcnow
from feedd.store import Store

MAX_LIMIT = 1000
# A config object is a few levels deep; the config's readers walk bodies recursively, so a deeper body would
# exhaust Python's recursion limit (a 500) before the validator could refuse it.
MAX_DEPTH = 32
_KINDS = {kind.section: kind for kind in ObjectKind}


class Releaser(Protocol):
    async def release_held(self, pipeline: str) -> int:
        """Queue the pipeline's held runs again, oldest first; returns how many."""


class ManageApi(Routes):
    def __init__(self, live: Any, store: Store, owner: Live | None, releaser: Releaser | None,
                 node: str = "") -> None:
        super().__init__(live, store)
        self._owner = owner
        self._releaser = releaser
        self._node = node  # the node answering (see feedd.cluster)

    def routes(self, app: web.Application) -> None:
        for section in _KINDS:
            app.router.add_get(f"/{section}", self.list)
            app.router.add_post(f"/{section}", self.create)
            app.router.add_get(f"/{section}/{{name}}", self.get)
            app.router.add_patch(f"/{section}/{{name}}", self.patch)
            app.router.add_delete(f"/{section}/{{name}}", self.delete)
        app.router.add_get("/audit", self.audit)
        app.router.add_get("/cluster", self.cluster)

    # Reading

    def _owned(self) -> Live:
        if self._owner is None:  # an app built without the daemon (some tests): nothing is managed
            raise ApiError(503, "unavailable", "objects cannot be managed here")
        return self._owner

    async def list(self, request: web.Request) -> web.Response:
        key = authenticate(request, self.config)
        kind = _kind(request)
        active = await self._store.pipeline_overrides() if kind is ObjectKind.PIPELINE else {}
        answers = [self._answer(s, active) for s in self._owned().all(kind) if self._visible(key, s)]
        for answer in answers:
            await self._arrivals(kind, answer)
        return web.json_response({"data": answers})

    async def get(self, request: web.Request) -> web.Response:
        key = authenticate(request, self.config)
        found = self._find(key, _kind(request), request.match_info["name"])
        active = await self._store.pipeline_overrides() if found.kind is ObjectKind.PIPELINE else {}
        return web.json_response(await self._arrivals(found.kind, self._answer(found, active)), headers=_etag(found))

    async def _arrivals(self, kind: ObjectKind, answer: dict[str, Any]) -> dict[str, Any]:
        """A pipeline that expects files also shows their arrivals (README, "Expected arrivals")."""
        pipe = self.config.pipelines.get(answer["name"]) if kind is ObjectKind.PIPELINE else None
        if pipe is not None and (found := await arrivals.shown(self._store, pipe, utcnow())) is not None:
            answer["arrivals"] = found
        return answer

    def _find(self, key: ApiKey, kind: ObjectKind, name: str) -> Shown:
        found = self._owned().get(kind, name)
        if found is None:
            raise ApiError(404, "not_found", f"no {kind} {name!r}")
        if not self._visible(key, found):
            raise ApiError(403, "forbidden", f"this API key may not use {kind} {name!r}")
        return found

    def _visible(self, key: ApiKey, shown: Shown) -> bool:
        """An app key sees the connections and pipelines of its connections, and every schema."""
        if key.admin or shown.kind is ObjectKind.SCHEMA:
            return True
        if shown.kind is ObjectKind.CONNECTION:
            return key.allows(shown.name)
        pipe = self.config.pipelines.get(shown.name)
        return pipe is not None and key.allows(pipe.connection)

    def _answer(self, shown: Shown, active: dict[str, bool]) -> dict[str, Any]:
        """The object in the config file's shape, wrapped; connections and pipelines also carry the flat
        view (camelCase, with the pipeline's runtime `active`) that apps read."""
        out: dict[str, Any] = {}
        if shown.kind is ObjectKind.CONNECTION and (conn := self.config.connections.get(shown.name)):
            out.update(connection_view(conn))
        elif shown.kind is ObjectKind.PIPELINE and (pipe := self.config.pipelines.get(shown.name)):
            out.update(pipeline_view(pipe, active.get(pipe.name, pipe.active)))
        out.update({"name": shown.name, "source": str(shown.source), "object": shown.body,
                    "createdAt": iso(shown.created_at), "updatedAt": iso(shown.updated_at),
                    "version": shown.version})
        return out

    # Changing

    async def create(self, request: web.Request) -> web.Response:
        key = authenticate(request, self.config)
        require_admin(key)
        kind = _kind(request)
        body = _shallow(await json_body(request))
        name = body.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ApiError(422, "invalid_config", "name: required (a string)",
                           details=[{"path": "name", "message": "required (a string)"}])
        dry_run = _dry_run(request)
        with translated():
            outcome = await self._owned().create(kind, name, body, key.name, dry_run)
        return self._changed(outcome, dry_run, 201)

    async def patch(self, request: web.Request) -> web.Response:
        key = authenticate(request, self.config)
        kind = _kind(request)
        name = request.match_info["name"]
        body = _shallow(await json_body(request))
        if kind is ObjectKind.PIPELINE and set(body) == {"active"}:
            return await self._switch(key, name, field(body, "active", bool))
        require_admin(key)
        self._find(key, kind, name)
        dry_run = _dry_run(request)
        with translated():
            outcome = await self._owned().update(kind, name, body, key.name, _if_match(request), dry_run)
        return self._changed(outcome, dry_run, 200)

    async def delete(self, request: web.Request) -> web.Response:
        key = authenticate(request, self.config)
        require_admin(key)
        kind = _kind(request)
        name = request.match_info["name"]
        self._find(key, kind, name)
        with translated():
            await self._owned().delete(kind, name, key.name, _if_match(request))
        return web.Response(status=204)

    async def _switch(self, key: ApiKey, name: str, active: bool) -> web.Response:
        """The runtime switch, for a pipeline from either source: kept in the store, not in the object."""
        pipe = self.config.pipelines.get(name)
        if pipe is None:
            raise ApiError(404, "not_found", f"no pipeline {name!r}")
        require_connection(key, pipe.connection)
        released = await switch_active(self._store, self._releaser, pipe.name, active)
        shown = self._find(key, ObjectKind.PIPELINE, name)
        answer = self._answer(shown, {pipe.name: active})
        answer["released"] = released
        return web.json_response(answer)

    def _changed(self, outcome: Outcome, dry_run: bool, status: int) -> web.Response:
        answer = self._answer(outcome.shown, {})
        answer["changed"] = outcome.changed
        if dry_run:
            answer["dryRun"] = True
        return web.json_response(answer, status=200 if dry_run or not outcome.changed else status,
                                 headers=_etag(outcome.shown))

    # The audit log

    async def audit(self, request: web.Request) -> web.Response:
        require_admin(authenticate(request, self.config))
        q = request.query
        limit = query_integer(q.get("limit"), "limit", 1, MAX_LIMIT, 100)
        entries, next_cursor = await self._store.list_audit(limit, row_cursor(q.get("cursor")))
        return web.json_response({"data": [e.to_json() for e in entries], "nextCursor": next_cursor})


    async def cluster(self, request: web.Request) -> web.Response:
        """The nodes sharing the store, their last heartbeat, and the work each holds."""
        require_admin(authenticate(request, self.config))
        return web.json_response(cluster_view(self.config, await self._store.nodes(), self._node))


def cluster_view(config: Config, nodes: list[Node], node: str) -> dict[str, Any]:
    """What `GET /cluster` answers (and the console shows): each node, whether it is the one answering, and
    whether it is alive (a heartbeat within `cluster.takeover_after`; a dead one is about to be taken over)."""
    fresh = utcnow() - timedelta(seconds=config.cluster.takeover_after)
    return {"node": node, "takeoverAfter": config.cluster.takeover_after,
            "data": [{**n.to_json(), "self": n.node_id == node, "alive": n.heartbeat_at >= fresh} for n in nodes]}


async def switch_active(store: Store, releaser: Releaser | None, pipeline: str, active: bool) -> int:
    """The runtime switch: kept in the store; turning it on releases the held runs (returns how many)."""
    await store.set_pipeline_active(pipeline, active)
    return await releaser.release_held(pipeline) if active and releaser is not None else 0


def _shallow(body: dict[str, Any]) -> dict[str, Any]:
    """`body`, or 422 when it is nested deeper than MAX_DEPTH (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(422, "invalid_config", f"the object is nested deeper than {MAX_DEPTH} levels",
                           details=[{"path": "", "message": f"nested deeper than {MAX_DEPTH} levels"}])
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return body


def _kind(request: web.Request) -> ObjectKind:
    return _KINDS[request.path.strip("/").split("/")[0]]


def _dry_run(request: web.Request) -> bool:
    return request.query.get("dryRun", "").lower() in ("true", "1")


def _if_match(request: web.Request) -> int | None:
    text = request.headers.get("If-Match")
    if text is None:
        return None
    text = text.strip().removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ApiError(400, "invalid_header", "If-Match: expected the object's version (as its ETag gives it)")
    return int(text)


def _etag(shown: Shown) -> dict[str, str]:
    return {"ETag": f'"{shown.version}"'} if shown.version is not None else {}
