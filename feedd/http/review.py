"""The review API (README, "Review"): a run's input headers and first rows, a preview of a mapping, and the
decision on a run in `needs_review`. Admin keys only. Every rule lives in `feedd.review`; this module only
translates HTTP (bodies, statuses) to it and back."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from feedd.errors import NotFoundError
from feedd.http.api import (
    ApiError,
    Routes,
    authenticate,
    field,
    json_body,
    require_admin,
    require_connection,
    translated,
)
from feedd.http.runs import run_json
from feedd.model import Run
from feedd.review import Reviews
from feedd.store import Store

_ID = re.compile(r"[0-9A-Z]{26}")
_DECISIONS = ("approve", "reject")


class ReviewApi(Routes):
    def __init__(self, live: Any, store: Store, reviews: Reviews | None) -> None:
        super().__init__(live, store)
        self._reviews = reviews

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/runs/{runId}/input/headers", self.headers)
        app.router.add_post("/runs/{runId}/preview", self.preview)
        app.router.add_post("/runs/{runId}/review", self.review)

    async def _run(self, request: web.Request) -> tuple[Reviews, Run, str]:
        """The reviews service, the run asked for and the actor (the key's name), for an admin key that may
        use the run's connection."""
        key = authenticate(request, self.config)
        require_admin(key)
        if self._reviews is None:  # an app built without the daemon (some tests)
            raise ApiError(503, "unavailable", "runs cannot be reviewed here")
        run_id = request.match_info["runId"]
        if not _ID.fullmatch(run_id):
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        try:
            run = await self._reviews.find(run_id)
        except NotFoundError as exc:
            raise ApiError(404, "not_found", exc.message) from None
        require_connection(key, run.connection)
        return self._reviews, run, key.name

    async def headers(self, request: web.Request) -> web.Response:
        reviews, run, _ = await self._run(request)
        with translated():
            return web.json_response(await reviews.sample(run))

    async def preview(self, request: web.Request) -> web.Response:
        reviews, run, _ = await self._run(request)
        body = await json_body(request, optional=True)
        mapping = field(body, "mapping", dict, required=False)
        rate = _rate(body)
        with translated():
            return web.json_response(await reviews.preview(run, mapping, rate))

    async def review(self, request: web.Request) -> web.Response:
        reviews, run, actor = await self._run(request)
        body = await json_body(request)
        choice = field(body, "decision", str)
        if choice not in _DECISIONS:
            raise ApiError(400, "invalid_body", 'decision: expected "approve" or "reject"')
        with translated():
            if choice == "approve":
                mapping = field(body, "mapping", dict, required=False)
                remember = bool(field(body, "remember", bool, required=False))
                run = await reviews.approve(run, actor, mapping, remember, _rate(body))
            else:
                message = field(body, "message", str)
                run = await reviews.reject(run, actor, message)
        return web.json_response(run_json(run))


def _rate(body: dict[str, Any]) -> float | None:
    """`maxErrorRate` (or `max_error_rate`, the config's spelling): a number from 0 to 1."""
    name = "maxErrorRate" if "maxErrorRate" in body else "max_error_rate"
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ApiError(400, "invalid_body", f"{name}: expected a number from 0 to 1")
    return float(value)
