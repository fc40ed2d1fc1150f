"""Config views: the flat shape in which apps read connections and pipelines (never a secret), and mapping
suggestions made by the pipeline's own auto-map code."""

from __future__ import annotations

import csv
import re
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from feedd.config.values import ApiKey, Connection, Destination, Pipeline
from feedd.http.api import ApiError, Routes, authenticate, require_connection
from feedd.pipeline.mapping import header_key, plan

MAX_HEADERS = 1000
# C0 and C1 controls, DEL, and lone surrogates: no column name a file can have once read as text
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _strict_query(request: web.Request) -> dict[str, str]:
    """The query decoded strictly: aiohttp replaces bytes that are not UTF-8 with U+FFFD, which would make a
    column name nobody sent; here they are a 400 naming the problem."""
    try:
        pairs = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_query", "the query is not valid UTF-8 once percent-decoded") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name, value)  # the first of a repeated name, as aiohttp's request.query.get()
    return query


def connection_view(c: Connection) -> dict[str, Any]:
    return {"name": c.name, "enabled": c.enabled, "quota": c.quota, "maxFileSize": c.max_file_size,
            "allowedIps": [str(n) for n in c.allowed_ips], "password": c.password_hash is not None,
            "authorizedKeys": len(c.authorized_keys) + (1 if c.authorized_keys_file else 0)}


def _destination_view(d: Destination) -> dict[str, Any]:
    out: dict[str, Any] = {"type": str(d.type), "key": d.key}
    for name, value in (("path", str(d.path) if d.path else None), ("url", d.url), ("bucket", d.bucket),
                        ("prefix", d.prefix or None), ("endpointUrl", d.endpoint_url), ("host", d.host)):
        if value is not None:
            out[name] = value  # webhook secrets, keys and passwords are never shown
    return out


def pipeline_view(p: Pipeline, active: bool) -> dict[str, Any]:
    return {
        "name": p.name, "connection": p.connection, "schema": p.schema, "direction": str(p.direction),
        "active": active, "match": list(p.match), "autoMap": p.auto_map, "egress": p.egress,
        "maxErrorRate": p.max_error_rate, "reports": p.reports,
        "format": {"type": p.format.type, "delimiter": p.format.delimiter, "encoding": p.format.encoding,
                   "header": p.format.header, "skipRows": p.format.skip_rows, "sheet": p.format.sheet},
        "output": {"format": p.output.format, "filename": p.output.filename},
        "mappings": {m.target: m.source or (f"{{template: {m.template}}}" if m.template else "<value>")
                     for m in p.mappings},
        "destinations": [_destination_view(d) for d in p.destinations],
    }


class ViewsApi(Routes):
    """Mapping suggestions: what the pipeline's auto-map would choose for a set of headers."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/pipelines/{name}/mapping-suggestions", self.suggestions)

    def _find(self, key: ApiKey, name: str) -> Pipeline:
        pipe = self.config.pipelines.get(name)
        if pipe is None:
            raise ApiError(404, "not_found", f"no pipeline {name!r}")
        require_connection(key, pipe.connection)
        return pipe

    async def suggestions(self, request: web.Request) -> web.Response:
        pipe = self._find(authenticate(request, self.config), request.match_info["name"])
        text = _strict_query(request).get("headers", "")
        if bad := _CONTROL.search(text):
            raise ApiError(400, "invalid_query", f"headers: a column name contains a control character "
                                                 f"(U+{ord(bad.group()):04X}); column names are text")
        headers = [h.strip() for h in next(csv.reader([text]), []) if h.strip()] if text else []
        if not headers:
            raise ApiError(400, "invalid_query", "headers: a comma-separated list of column names is required")
        if len(headers) > MAX_HEADERS:
            raise ApiError(400, "invalid_query", f"headers: at most {MAX_HEADERS}")
        memory = await self._store.recall_mapping(pipe.connection, header_key(headers))
        chosen = plan(pipe, self.config.schemas[pipe.schema], headers, memory)
        return web.json_response({
            "suggestions": {t: {"source": c.source, "score": c.score, "reason": c.reason}
                            for t, c in chosen.choices.items()},
            "unmapped": {f: {"candidates": cands} for f, cands in chosen.unmapped_required.items()},
        })
