"""`GET /openapi.json`: the side API described as OpenAPI 3.1, every path, parameter, body, response and
error. Kept next to the routes it describes; the test suite checks the running app against it."""

from __future__ import annotations

from typing import Any

from feedd.config.values import REVIEW_REASONS
from feedd.model import RunStatus, UploadState

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _object(required: list[str], optional: dict[str, Any] | None = None, *, extra: bool = False,
            **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": {**props, **(optional or {})},
            "additionalProperties": extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


_ERRORS = {
    400: "The body or a parameter is not what was expected",
    401: "No API key, or not a valid one",
    403: "The key may not use this connection",
    404: "No such id or name",
    408: "The body did not arrive in time",
    409: "The resource is in the wrong state for this",
    412: "A precondition (If-Match) no longer holds",
    413: "The body is too large",
    410: "Gone: deleted by retention",
    422: "Valid JSON with the wrong meaning",
    429: "Too many requests in progress for this key or address (or on the port): see Retry-After",
    507: "The server is low on disk space (sftp.min_free_space): try again later",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ref("Error"), _ERRORS[c]) for c in codes}


def _op(summary: str, ok: dict[str, Any], *codes: int, ok_status: int = 200, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, auth: bool = True) -> dict[str, Any]:
    # every request may meet the caps on requests in flight (429), and a body its minimum rate (408)
    extra = (429, 408) if body is not None else (429,)
    op: dict[str, Any] = {"summary": summary,
                          "responses": {str(ok_status): ok, **_errors(*sorted({*codes, *extra}))}}
    if auth:
        op["responses"].update(_errors(401))
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str, pattern: str | None = None, kind: str = "string") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_ID = "^[0-9A-Z]{26}$"
_ONE = "(" + "|".join(RunStatus) + ")"
_STATUSES = f"^{_ONE}(,{_ONE})*$"
_TIME = {"type": "string", "format": "date-time"}
_NTIME = _nullable("string", format="date-time")
_ROW_ERROR = _object(["row", "field", "code", "message"], row={"type": "integer"}, field=_nullable("string"),
                     code={"type": "string"}, message={"type": "string"})

SCHEMAS: dict[str, Any] = {
    "Error": _object(["error"], error=_object(["code", "message"], code={"type": "string"},
                                                message={"type": "string"})),
    "Health": _object(["status"], status={"enum": ["ok", "failing"]},
                      failing={"type": "array", "items": {"type": "string"}}),
    "Run": _object(
        ["runId", "pipeline", "connection", "direction", "status", "source", "counts", "mapping", "errors",
         "warnings", "error", "deliveries", "duplicateOf", "createdAt", "startedAt", "finishedAt", "acknowledgedAt"],
        runId={"type": "string"}, pipeline=_nullable("string"), connection={"type": "string"},
        direction={"enum": ["inbound", "outbound"]}, status={"enum": [str(s) for s in RunStatus]},
        source=_object(["kind", "name", "size", "sha256", "receivedAt"], kind={"enum": ["sftp", "upload", "tus"]},
                       name={"type": "string"}, size={"type": "integer"}, sha256={"type": "string"},
                       receivedAt=_TIME),
        swept=_object(["input", "outputs"], input={"type": "boolean"}, outputs={"type": "boolean"}),
        counts=_object(["rows", "valid", "invalid", "warned"], rows={"type": "integer"}, valid={"type": "integer"},
                       invalid={"type": "integer"}, warned={"type": "integer"}),
        mapping={"type": "object", "additionalProperties": {"type": "string"}},
        errors={"type": "array", "items": _ROW_ERROR},
        warnings={"type": "array", "items": _ROW_ERROR},
        error={"oneOf": [{"type": "null"}, _object(["code", "message"], code={"type": "string"},
                                                   message={"type": "string"})]},
        deliveries={"type": "array", "items": _object(
            ["destination", "status", "attempts", "lastError", "deliveredAt"], destination={"type": "string"},
            status={"enum": ["pending", "delivered", "failed"]}, attempts={"type": "integer"},
            lastError=_nullable("string"), deliveredAt=_NTIME)},
        duplicateOf=_nullable("string"), createdAt=_TIME, startedAt=_NTIME, finishedAt=_NTIME,
        acknowledgedAt=_NTIME, deliveryFailed={"type": "boolean"},
        mappingReasons={"type": "object", "additionalProperties": _ref("MappingChoice")},
        review={"oneOf": [{"type": "null"}, _ref("Review")]},
    ),
    "MappingChoice": _object(["source", "reason", "score"], {"fallback": {"type": "string"}},
                             source=_nullable("string"), reason={"type": "string"}, score={"type": "number"}),
    "Review": {"type": "object", "required": ["reason", "message", "details"], "properties": {
        "reason": {"enum": list(REVIEW_REASONS)}, "message": _nullable("string"),
        "details": {"type": "object", "description": "unmapped_required_field: {fields: [{field, configured, "
                                                     "closest}]}; schema_drift: {added, removed}; "
                                                     "too_many_errors: {rows, valid, invalid, rate, maxErrorRate}"},
        "decision": {"type": "object", "description": "what a reviewer decided: {decision: approve|reject, actor, "
                                                      "at, mapping?, remember?, maxErrorRate?, message?}"}},
        "additionalProperties": False},
    "InputSample": _object(
        ["runId", "status", "headers", "rows", "detected", "error", "suggestions", "unmapped"],
        runId={"type": "string"}, status={"enum": [str(s) for s in RunStatus]},
        headers={"type": "array", "items": {"type": "string"}},
        rows={"type": "array", "maxItems": 20, "items": _object(["row", "cells"], row={"type": "integer"},
                                                               cells={"type": "array"})},
        detected={"type": "object"},
        error={"oneOf": [{"type": "null"}, _object(["code", "message"], code={"type": "string"},
                                                   message={"type": "string"})]},
        suggestions={"type": "object", "additionalProperties": _ref("MappingChoice")},
        unmapped={"type": "object", "additionalProperties": _object(
            ["configured", "closest"], configured=_nullable("string"),
            closest={"type": "array", "items": {"type": "string"}})}),
    "PreviewRequest": _object([], {
        "mapping": _ref("ReviewMapping"),
        "maxErrorRate": {"type": "number", "minimum": 0, "maximum": 1},
        "max_error_rate": {"type": "number", "minimum": 0, "maximum": 1}}),
    "ReviewMapping": {"type": "object", "description": "schema field -> a header of the input, or a mapping "
                                                       "object as in the config ({from, transforms, default, "
                                                       "template, value})",
                      "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "object"}]}},
    "Preview": _object(
        ["runId", "status", "counts", "mapping", "errors", "error"],
        runId={"type": "string"}, status={"enum": ["completed", "failed"]},
        counts=_object(["rows", "valid", "invalid"], rows={"type": "integer"}, valid={"type": "integer"},
                       invalid={"type": "integer"}),
        mapping={"type": "object", "additionalProperties": _ref("MappingChoice")},
        errors={"type": "array", "maxItems": 100, "items": _object(
            ["row", "field", "code", "message"], row={"type": "integer"}, field=_nullable("string"),
            code={"type": "string"}, message={"type": "string"})},
        error={"oneOf": [{"type": "null"}, _object(["code", "message"], code={"type": "string"},
                                                   message={"type": "string"})]}),
    "ReviewDecision": {"oneOf": [
        _object(["decision"], {"mapping": _ref("ReviewMapping"), "remember": {"type": "boolean"},
                               "maxErrorRate": {"type": "number", "minimum": 0, "maximum": 1}},
                decision={"const": "approve"}),
        _object(["decision", "message"], decision={"const": "reject"},
                message={"type": "string", "minLength": 1, "maxLength": 2000, "pattern": "\\S"}),
    ]},
    "Event": _object(
        ["eventId", "url", "type", "status", "attempts", "lastError", "nextAttemptAt", "createdAt", "data"],
        eventId={"type": "string"}, url={"type": "string"}, type={"type": "string"},
        status={"enum": ["pending", "delivered", "failed"]}, attempts={"type": "integer"},
        lastError=_nullable("string"), nextAttemptAt=_NTIME, createdAt=_TIME, data={}),
    "EventPage": _object(["data", "nextCursor"], data={"type": "array", "items": _ref("Event")},
                         nextCursor=_nullable("string")),
    "RunPage": _object(["data", "nextCursor"], data={"type": "array", "items": _ref("Run")},
                       nextCursor=_nullable("string")),
    "UploadInit": _object(
        ["connectionName", "pipelineId", "totalParts"],
        {"filename": {"type": "string", "pattern": "^(?!.*\\.\\.)[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$"},
         "output": {"enum": ["csv", "json", "jsonl"]}},
        connectionName={"type": "string"}, pipelineId={"type": "string"},
        totalParts={"type": "integer", "minimum": 1, "maximum": 10000}),
    "Upload": _object(
        ["uploadId", "state", "connectionName", "pipelineId", "totalParts", "partsReceived", "records",
         "createdAt", "updatedAt"],
        {"runId": {"type": "string"}, "filename": {"type": "string"}, "output": {"enum": ["csv", "json", "jsonl"]}},
        uploadId={"type": "string"}, state={"enum": [str(s) for s in UploadState]},
        connectionName={"type": "string"}, pipelineId={"type": "string"}, totalParts={"type": "integer"},
        partsReceived={"type": "array", "items": {"type": "integer"}}, records={"type": "integer"},
        createdAt=_TIME, updatedAt=_TIME),
    "Part": _object(["partNumber", "records", "etag"], partNumber={"type": "integer"},
                    records={"type": "integer"}, etag={"type": "string"}),
    "Complete": _object(["parts"], parts={"type": "array", "items": _object(
        ["partNumber"], {"etag": {"type": "string"}}, partNumber={"type": "integer"})}),
    "Completed": _object(["uploadId", "state", "runId", "records"], uploadId={"type": "string"},
                         state={"const": "completed"}, runId={"type": "string"}, records={"type": "integer"}),
    "Aborted": _object(["uploadId", "state"], uploadId={"type": "string"}, state={"const": "aborted"}),
    "Connection": _object(
        ["name", "enabled", "quota", "maxFileSize", "allowedIps", "password", "authorizedKeys"],
        name={"type": "string"}, enabled={"type": "boolean"}, quota=_nullable("integer"),
        maxFileSize=_nullable("integer"), allowedIps={"type": "array", "items": {"type": "string"}},
        password={"type": "boolean", "description": "whether a password is set (never the hash)"},
        authorizedKeys={"type": "integer", "description": "how many key sources are configured"}),
    "Pipeline": _object(
        ["name", "connection", "schema", "direction", "active", "match", "autoMap", "egress", "maxErrorRate",
         "reports", "format", "output", "mappings", "destinations"],
        {"released": {"type": "integer", "description": "held runs queued again (PATCH only)"},
         "arrivals": _object(["lastAt", "nextDueAt", "missed"], extra=True, lastAt=_NTIME, nextDueAt=_NTIME,
                             missed={"type": "array", "items": {"type": "object"}})},
        name={"type": "string"}, connection={"type": "string"}, schema={"type": "string"},
        direction={"enum": ["inbound", "outbound"]}, active={"type": "boolean"},
        match={"type": "array", "items": {"type": "string"}}, autoMap={"type": "boolean"},
        egress={"enum": ["valid_only", "all"]}, maxErrorRate={"type": "number"}, reports={"type": "boolean"},
        format={"type": "object"}, output={"type": "object"},
        mappings={"type": "object", "additionalProperties": {"type": "string"}},
        destinations={"type": "array", "items": {"type": "object"}}),
    "Suggestions": _object(
        ["suggestions", "unmapped"],
        suggestions={"type": "object", "additionalProperties": _object(
            ["source", "score", "reason"], source=_nullable("string"), score={"type": "number"},
            reason={"type": "string"})},
        unmapped={"type": "object", "additionalProperties": _object(
            ["candidates"], candidates={"type": "array", "items": {"type": "string"}})}),
    "Retry": _object([], {"reprocess": {"type": "boolean"}}),
}

_UPLOAD_ID = _path_param("uploadId", _ID)
_TEXT = "[^\\u0000-\\u001f\\u007f-\\u009f]"  # no C0 or C1 control characters, no DEL
_HEADERS = f"^{_TEXT}*[^,\\s\\u0000-\\u001f\\u007f-\\u009f]{_TEXT}*$"  # and at least one name
_RUN_ID = _path_param("runId", _ID)
_NAME = _path_param("name")
_NDJSON = {"description": "NDJSON, one object per line, streamed",
           "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}


def _body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(schema)}}}


PATHS: dict[str, Any] = {
    "/healthz": {"get": {**_op("Liveness", _json(_ref("Health"), "Up"), auth=False), "responses": {
        "200": _json(_ref("Health"), "Up"), "503": _json(_ref("Health"), "A long-lived task keeps crashing"),
        **_errors(429)}}},
    "/metrics": {"get": _op("Prometheus metrics", {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                            auth=False)},
    "/openapi.json": {"get": _op("This document", _json({"type": "object"}, "OpenAPI 3.1"), auth=False)},
    "/outbound/uploads": {"post": _op("Start an outbound multipart upload", _json(_ref("Upload"), "Started"),
                                      400, 403, 404, 413, 422, ok_status=201, body=_body("UploadInit"))},
    "/outbound/uploads/{uploadId}": {"get": _op("An upload's state", _json(_ref("Upload"), "The upload"), 403, 404,
                                                params=[_UPLOAD_ID])},
    "/outbound/uploads/{uploadId}/parts/{partNumber}": {"put": _op(
        "Send (or replace) one part: a JSON array of objects", _json(_ref("Part"), "Stored"),
        400, 403, 404, 408, 409, 413, 507, params=[_UPLOAD_ID, {**_path_param("partNumber", kind="integer"),
                                          "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}],
        body={"required": True, "content": {JSON: {"schema": {"type": "array", "items": {"type": "object"}}}}})},
    "/outbound/uploads/{uploadId}/complete": {"post": _op(
        "Join the parts and start the run", _json(_ref("Completed"), "Completed"), 400, 403, 404, 409, 413, 422,
        params=[_UPLOAD_ID], body=_body("Complete"))},
    "/outbound/uploads/{uploadId}/abort": {"post": _op(
        "Abort and delete the stored parts", _json(_ref("Aborted"), "Aborted"), 403, 404, 409,
        params=[_UPLOAD_ID])},
    "/runs": {"get": _op("Runs, newest first", _json(_ref("RunPage"), "One page"), 400, 403, params=[
        _query("connection", {"type": "string"}, "only this connection's runs"),
        _query("pipeline", {"type": "string"}, "only this pipeline's runs"),
        _query("status", {"type": "string", "pattern": _STATUSES}, "comma-separated statuses"),
        _query("acknowledged", {"enum": ["true", "false"]}, "acknowledged or not"),
        _query("deliveryFailed", {"enum": ["true", "false"]}, "with a delivery that failed for good, or without"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)"),
        _query("cursor", {"type": "string", "pattern": _ID}, "nextCursor of the previous page"),
    ])},
    "/events": {"get": _op("Webhook events, newest first (admin keys only)",
                           _json(_ref("EventPage"), "One page"), 400, 403, params=[
        _query("status", {"enum": ["pending", "delivered", "failed"]}, "only events in this state"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)"),
        _query("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "nextCursor of the previous page"),
    ])},
    "/runs/{runId}": {"get": _op("One run", _json(_ref("Run"), "The run"), 403, 404, params=[_RUN_ID])},
    "/runs/{runId}/records": {"get": _op("The run's output records as NDJSON", _NDJSON, 403, 404, 409, 410,
                                         params=[_RUN_ID])},
    "/runs/{runId}/rejects": {"get": _op("Rejected rows as NDJSON {row, errors, raw}", _NDJSON, 403, 404, 409,
                                         410, params=[_RUN_ID])},
    "/runs/{runId}/ack": {"post": _op("Mark the run acknowledged", _json(_ref("Run"), "The run"), 403, 404,
                                      params=[_RUN_ID])},
    "/runs/{runId}/retry": {"post": _op(
        "Re-deliver failed destinations, or process the input again", _json(_ref("Run"), "The run"),
        400, 403, 404, 409, 413, params=[_RUN_ID], body=_body("Retry", required=False))},
    "/runs/{runId}/input/headers": {"get": _op(
        "The input's header row and first 20 rows as read, with the mapping's suggestions (admin keys)",
        _json(_ref("InputSample"), "The sample"), 403, 404, 409, params=[_RUN_ID])},
    "/runs/{runId}/preview": {"post": _op(
        "What approving the run with this mapping would give; changes nothing (admin keys)",
        _json(_ref("Preview"), "The preview"), 400, 403, 404, 409, 413, 422, params=[_RUN_ID],
        body=_body("PreviewRequest", required=False))},
    "/runs/{runId}/review": {"post": _op(
        "Decide a run in needs_review: approve (processed again with the mapping) or reject (admin keys)",
        _json(_ref("Run"), "The run, queued again or failed"), 400, 403, 404, 409, 413, 422, params=[_RUN_ID],
        body=_body("ReviewDecision"))},
    "/pipelines/{name}/mapping-suggestions": {"get": _op(
        "How the pipeline would map these headers", _json(_ref("Suggestions"), "Suggestions"), 400, 403, 404,
        params=[_NAME, {"name": "headers", "in": "query", "required": True,
                        "schema": {"type": "string", "pattern": _HEADERS},
                        "description": "comma-separated column names (text: no control characters)"}])},
}


def _header(name: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema}


_TUS_VERSION = _header("Tus-Resumable", {"const": "1.0.0"})
_TUS_ID = _path_param("id", "^[0-9a-f]{32}$")


def _tus(summary: str, status: int, description: str, *codes: int, params: list[dict[str, Any]] | None = None,
         body: dict[str, Any] | None = None, run_id: bool = False) -> dict[str, Any]:
    """A tus request: answers carry tus headers, errors the usual body (460: checksum mismatch)."""
    every = {*codes, 429, *((408,) if body is not None else ())}
    errors = {str(c): _json(_ref("Error"), _ERRORS.get(c, _TUS_ERRORS.get(c, ""))) for c in sorted(every)}
    ok: dict[str, Any] = {"description": description}
    if run_id:
        ok["headers"] = {"Feedd-Run-Id": {"description": "The run the upload became, once it is complete: on the "
                                                         "request that completed it and on every HEAD after",
                                          "required": False, "schema": {"type": "string"}}}
    op: dict[str, Any] = {"summary": summary, "tags": ["tus"], "parameters": params or [],
                          "responses": {str(status): ok, **errors, **_errors(401)}}
    if body is not None:
        op["requestBody"] = body
    return op


_TUS_ERRORS = {410: "The upload expired or was terminated", 412: "Tus-Resumable is missing or not 1.0.0",
               415: "Content-Type is not application/offset+octet-stream", 423: "Another PATCH is in progress",
               460: "Upload-Checksum does not match the chunk (discarded)"}
_OCTETS = {"required": False, "content": {"application/offset+octet-stream": {"schema": {
    "type": "string", "format": "binary"}}}}

PATHS.update({
    "/tus/": {
        "options": {"summary": "tus capabilities: Tus-Version, Tus-Extension, Tus-Max-Size, "
                               "Tus-Checksum-Algorithm", "tags": ["tus"], "security": [],
                    "responses": {"204": {"description": "Capabilities in the headers"}, **_errors(429)}},
        "post": _tus("Create an upload (creation, creation-with-upload). Upload-Metadata must carry connection, "
                     "pipeline and filename", 201, "Created: Location, Upload-Expires (Upload-Offset with a body)",
                     400, 403, 404, 412, 413, 422, 507, params=[
                         _TUS_VERSION, _header("Upload-Length", {"type": "string", "pattern": "^[0-9]+$"}),
                         _header("Upload-Metadata", {"type": "string"})], body=_OCTETS, run_id=True),
    },
    "/tus/{id}": {
        "options": {"summary": "tus capabilities", "tags": ["tus"], "security": [], "parameters": [_TUS_ID],
                    "responses": {"204": {"description": "Capabilities in the headers"}, **_errors(429)}},
        "head": _tus("Offset and length (Cache-Control: no-store)", 200, "Upload-Offset, Upload-Length",
                     403, 404, 410, 412, params=[_TUS_ID, _TUS_VERSION], run_id=True),
        "patch": _tus("Append bytes at Upload-Offset (checksum: Upload-Checksum)", 204, "The new Upload-Offset",
                      400, 403, 404, 409, 410, 412, 413, 415, 423, 460, 507, params=[
                          _TUS_ID, _TUS_VERSION, _header("Upload-Offset", {"type": "string", "pattern": "^[0-9]+$"}),
                          _header("Upload-Checksum", {"type": "string"}, required=False)], body=_OCTETS,
                      run_id=True),
        "delete": _tus("Terminate: the bytes are deleted", 204, "Terminated", 403, 404, 409, 410, 412, 423,
                       params=[_TUS_ID, _TUS_VERSION]),
    },
})


# Connections, schemas and pipelines: both sources listed and read; the store's created, changed and deleted
# with admin keys. Bodies are objects in the config file's own shape (snake_case, as a YAML block): the
# config's validator judges them, so the document leaves their keys open.

_SECTIONS = {"connections": "connection", "schemas": "schema", "pipelines": "pipeline"}
_CONFIG_OBJECT = {"type": "object", "additionalProperties": True,
                  "description": "the object in the config file's own shape (snake_case keys, as a YAML block)"}
_WRAPPER = {
    "name": {"type": "string"},
    "source": {"enum": ["file", "api"], "description": "file: provisioned (read-only here); api: managed"},
    "object": {**_CONFIG_OBJECT, "description": "the object in the config file's shape, without secrets (a "
                                                "literal secret is shown as <redacted>; connections carry "
                                                "hasPassword instead of a password)"},
    "createdAt": _NTIME, "updatedAt": _NTIME,
    "version": {**_nullable("integer"), "description": "raised by one at each change (null for the file's "
                                                       "objects); the ETag, and what If-Match compares"},
}
_CHANGE = {"changed": {"type": "boolean", "description": "whether the request changed (or, with dryRun, would "
                                                         "change) the object"},
           "dryRun": {"const": True, "description": "present when nothing was written (?dryRun=true)"}}


def _answer(flat: dict[str, Any] | None, *, flat_required: bool) -> dict[str, Any]:
    """A managed-object answer: the wrapper, and for connections and pipelines the flat view apps read.
    The flat view is of the config in force, so a dry-run creation (not in force) answers without it."""
    props = {**(flat["properties"] if flat else {}), **_WRAPPER, **_CHANGE}
    required = [*_WRAPPER, *(f for f in (flat["required"] if flat else []) if flat_required and f != "name")]
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


SCHEMAS["Connection"] = _answer(SCHEMAS["Connection"], flat_required=True)
SCHEMAS["ConnectionCreated"] = _answer(SCHEMAS["Connection"], flat_required=False)
SCHEMAS["Pipeline"] = _answer(SCHEMAS["Pipeline"], flat_required=True)
SCHEMAS["PipelineCreated"] = _answer(SCHEMAS["Pipeline"], flat_required=False)
SCHEMAS["Schema"] = _answer(None, flat_required=True)
SCHEMAS["SchemaCreated"] = SCHEMAS["Schema"]
SCHEMAS["NewObject"] = {"type": "object", "required": ["name"], "additionalProperties": True,
                        "properties": {"name": {"type": "string", "minLength": 1}},
                        "description": "{name, ...the object in the config file's shape}"}
SCHEMAS["ObjectPatch"] = {**_CONFIG_OBJECT, "description": "keys of the object in the config file's shape: each "
                                                           "given key replaces that key whole; null restores "
                                                           "its default"}
SCHEMAS["PipelinePatch"] = {**_CONFIG_OBJECT, "properties": {"active": {"type": "boolean"}},
                            "description": "{active} alone: the runtime switch (any pipeline, app keys too; kept "
                                           "across restarts; on releases held runs). Other keys: as ObjectPatch"}
SCHEMAS["InvalidConfig"] = _object(["error"], error=_object(
    ["code", "message", "details"], code={"const": "invalid_config"}, message={"type": "string"},
    details={"type": "array", "items": _object(
        ["path", "message"], path={"type": "string", "description": "a key path inside the object"},
        message={"type": "string"})}))
SCHEMAS["AuditEntry"] = _object(
    ["at", "actor", "action", "kind", "name", "before", "after"], at=_TIME, actor={"type": "string"},
    action={"enum": ["create", "update", "delete", "reload"]},
    kind={"enum": [*_SECTIONS.values(), "config"]}, name={"type": "string"},
    before={"oneOf": [{"type": "null"}, {"type": "object"}]}, after={"oneOf": [{"type": "null"}, {"type": "object"}]})
SCHEMAS["AuditPage"] = _object(["data", "nextCursor"], data={"type": "array", "items": _ref("AuditEntry")},
                               nextCursor=_nullable("string"))

_ETAG = {"ETag": {"description": "the object's version, quoted (managed objects only)", "required": False,
                  "schema": {"type": "string", "pattern": '^"[0-9]+"$'}}}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
             "schema": {"type": "string", "pattern": '^(W/)?"?[0-9]{1,18}"?$'},
             "description": "the version last read (its ETag): 412 if the object changed since"}
_DRY_RUN = _query("dryRun", {"enum": ["true", "false"]}, "true: validate and answer, write nothing")
_MANAGE_ERRORS = {
    403: "An app key (this needs an admin key), or a key that may not use this object",
    409: "The name exists (exists), is the config file's (provisioned), or is in use (in_use)",
    412: "If-Match names a version the object is no longer at",
    422: "The object is not valid: each problem's key path and message in error.details",
}


def _with(op: dict[str, Any], *, ok_headers: bool = False, ok: str = "200",
          extra_ok: dict[str, Any] | None = None) -> dict[str, Any]:
    """An operation with the management API's own error texts, 422 with details, and ETag on success."""
    responses = op["responses"]
    for code, text in _MANAGE_ERRORS.items():
        if str(code) in responses:
            schema = _ref("InvalidConfig") if code == 422 else _ref("Error")
            responses[str(code)] = _json(schema, text)
    if extra_ok:
        responses.update(extra_ok)
    if ok_headers:
        for status in (ok, *(extra_ok or {})):
            responses[status]["headers"] = _ETAG
    return op


for _section, _kind in _SECTIONS.items():
    _answer_ref, _created_ref = _ref(_kind.capitalize()), _ref(f"{_kind.capitalize()}Created")
    _patch = _body("PipelinePatch" if _kind == "pipeline" else "ObjectPatch")
    PATHS[f"/{_section}"] = {
        "get": _op(f"Every {_kind} of both sources (app keys: those of their connections)", _json(
            _object(["data"], data={"type": "array", "items": _answer_ref}), f"The {_section}")),
        "post": _with(_op(
            f"Create a {_kind} (admin)", _json(_created_ref, "Created"), 400, 403, 409, 413, 422, ok_status=201,
            body=_body("NewObject"), params=[_DRY_RUN]), ok="201", ok_headers=True,
            extra_ok={"200": _json(_created_ref, "dryRun=true: valid, nothing written")}),
    }
    PATHS[f"/{_section}/{{name}}"] = {
        "get": _with(_op(f"One {_kind}", _json(_answer_ref, f"The {_kind}"), 403, 404, params=[_NAME]),
                     ok_headers=True),
        "patch": _with(_op(
            f"Change a managed {_kind} (admin)" + (
                "; or switch any pipeline on or off with {active} alone (app keys too; kept across restarts; on "
                "releases held runs: `released`)" if _kind == "pipeline" else ""),
            _json(_answer_ref, f"The {_kind} (changed: false when the body changed nothing)"),
            400, 403, 404, 409, 412, 413, 422, params=[_NAME, _IF_MATCH, _DRY_RUN], body=_patch), ok_headers=True),
        "delete": _with(_op(f"Delete a managed {_kind} (admin; 409 while in use)",
                            {"description": "Deleted"}, 400, 403, 404, 409, 412, ok_status=204,
                            params=[_NAME, _IF_MATCH])),
    }
PATHS["/audit"] = {"get": _op("Every change of the config in force, newest first (admin)",
                              _json(_ref("AuditPage"), "One page"), 400, 403, params=[
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)"),
    _query("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "nextCursor of the previous page"),
])}

SCHEMAS["Node"] = _object(
    ["node", "startedAt", "heartbeatAt", "self", "alive", "holds"], node={"type": "string"},
    startedAt={"type": "string", "format": "date-time"}, heartbeatAt={"type": "string", "format": "date-time"},
    self={"type": "boolean"}, alive={"type": "boolean"}, host={"type": "string"}, pid={"type": "integer"},
    sftp={"type": "array", "items": {"type": "string"}}, http={"type": "array", "items": {"type": "string"}},
    holds=_object(["runs", "deliveries", "events"], runs={"type": "array", "items": {"type": "string"}},
                  deliveries={"type": "integer"}, events={"type": "integer"}))
SCHEMAS["Cluster"] = _object(["node", "takeoverAfter", "data"], node={"type": "string"},
                             takeoverAfter={"type": "number"}, data={"type": "array", "items": _ref("Node")})
PATHS["/cluster"] = {"get": _op("The nodes sharing the store, their last heartbeat and the work each holds (admin)",
                                _json(_ref("Cluster"), "The nodes, oldest first"), 403)}


def operation_id(method: str, path: str) -> str:
    """`post /outbound/uploads/{uploadId}/complete` -> `postOutboundUploadsByUploadIdComplete`."""
    words = [f"By{w[1:-1][:1].upper()}{w[2:-1]}" if w.startswith("{") else w[:1].upper() + w[1:]
             for w in path.replace("-", "/").replace(".", "/").split("/") if w]
    return method + "".join(words)


for _path, _ops in PATHS.items():
    for _method, _operation in _ops.items():
        _operation["operationId"] = operation_id(_method, _path)


def _links(path: str, method: str, status: str, **targets: dict[str, Any]) -> None:
    """Links (OpenAPI 3.1) from one response to the operations that use what it returned: how a client
    (or a stateful test) goes from an upload to its run."""
    links = PATHS[path][method]["responses"][status].setdefault("links", {})
    for name, params in targets.items():
        target_path, target_method = _LINK_TARGETS[name]
        links[name] = {"operationId": operation_id(target_method, target_path), "parameters": params}


_LINK_TARGETS = {
    "GetUpload": ("/outbound/uploads/{uploadId}", "get"),
    "PutPart": ("/outbound/uploads/{uploadId}/parts/{partNumber}", "put"),
    "CompleteUpload": ("/outbound/uploads/{uploadId}/complete", "post"),
    "AbortUpload": ("/outbound/uploads/{uploadId}/abort", "post"),
    "GetRun": ("/runs/{runId}", "get"),
    "GetRecords": ("/runs/{runId}/records", "get"),
    "GetRejects": ("/runs/{runId}/rejects", "get"),
    "AckRun": ("/runs/{runId}/ack", "post"),
    "RetryRun": ("/runs/{runId}/retry", "post"),
    "GetPipeline": ("/pipelines/{name}", "get"),
    "PatchPipeline": ("/pipelines/{name}", "patch"),
    "MappingSuggestions": ("/pipelines/{name}/mapping-suggestions", "get"),
}
_UPLOAD = {"uploadId": "$response.body#/uploadId"}
_links("/outbound/uploads", "post", "201", GetUpload=_UPLOAD, PutPart={**_UPLOAD, "partNumber": 1},
       CompleteUpload=_UPLOAD, AbortUpload=_UPLOAD)
_links("/outbound/uploads/{uploadId}/parts/{partNumber}", "put", "200",
       CompleteUpload={"uploadId": "$request.path.uploadId"}, GetUpload={"uploadId": "$request.path.uploadId"})
_RUN = {"runId": "$response.body#/runId"}
_links("/outbound/uploads/{uploadId}/complete", "post", "200", GetRun=_RUN, GetRecords=_RUN, GetRejects=_RUN,
       AckRun=_RUN, RetryRun=_RUN)
_links("/outbound/uploads/{uploadId}", "get", "200", GetRun=_RUN)
_FIRST_RUN = {"runId": "$response.body#/data/0/runId"}
_links("/runs", "get", "200", GetRun=_FIRST_RUN, GetRecords=_FIRST_RUN, AckRun=_FIRST_RUN)
_FIRST_PIPELINE = {"name": "$response.body#/data/0/name"}
_links("/pipelines", "get", "200", GetPipeline=_FIRST_PIPELINE, PatchPipeline=_FIRST_PIPELINE,
       MappingSuggestions=_FIRST_PIPELINE)
_links("/pipelines/{name}", "get", "200", MappingSuggestions={"name": "$response.body#/name"},
       PatchPipeline={"name": "$response.body#/name"})


for _section, _kind in _SECTIONS.items():
    # a created or listed object to reading, changing and deleting it
    _title = _kind.capitalize()
    for _verb in ("get", "patch", "delete"):
        _LINK_TARGETS[f"{_verb.capitalize()}{_title}"] = (f"/{_section}/{{name}}", _verb)
    _by_name = {f"{v}{_title}": {"name": "$response.body#/name"} for v in ("Get", "Patch", "Delete")}
    _first = {f"{v}{_title}": {"name": "$response.body#/data/0/name"} for v in ("Get", "Patch", "Delete")}
    _links(f"/{_section}", "post", "201", **_by_name)
    _links(f"/{_section}", "get", "200", **_first)
    _links(f"/{_section}/{{name}}", "patch", "200", **{k: v for k, v in _by_name.items() if not k.startswith("Patch")})


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "feedd side API", "version": version,
                 "description": "Outbound multipart uploads, runs, config views. Errors are "
                                "{\"error\": {\"code\", \"message\"}}."},
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
