"""`GET /openapi.json`: the side API described as OpenAPI 3.1, every path, parameter, body, response and
error. Kept next to the routes it describes; the test suite checks the running app against it."""

from __future__ import annotations

from typing import Any

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
    413: "The body is too large",
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
        source=_object(["kind", "name", "size", "sha256"], kind={"enum": ["sftp", "upload", "tus"]},
                       name={"type": "string"}, size={"type": "integer"}, sha256={"type": "string"}),
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
        mappingReasons={"type": "object", "additionalProperties": _object(
            ["source", "reason", "score"], {"fallback": {"type": "string"}}, source=_nullable("string"),
            reason={"type": "string"}, score={"type": "number"})},
    ),
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
        {"released": {"type": "integer", "description": "held runs queued again (PATCH only)"}},
        name={"type": "string"}, connection={"type": "string"}, schema={"type": "string"},
        direction={"enum": ["inbound", "outbound"]}, active={"type": "boolean"},
        match={"type": "array", "items": {"type": "string"}}, autoMap={"type": "boolean"},
        egress={"enum": ["valid_only", "all"]}, maxErrorRate={"type": "number"}, reports={"type": "boolean"},
        format={"type": "object"}, output={"type": "object"},
        mappings={"type": "object", "additionalProperties": {"type": "string"}},
        destinations={"type": "array", "items": {"type": "object"}}),
    "PipelinePatch": _object(["active"], active={"type": "boolean"}),
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
    "/events": {"get": _op("Webhook events, newest first (keys with every connection only)",
                           _json(_ref("EventPage"), "One page"), 400, 403, params=[
        _query("status", {"enum": ["pending", "delivered", "failed"]}, "only events in this state"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)"),
        _query("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "nextCursor of the previous page"),
    ])},
    "/runs/{runId}": {"get": _op("One run", _json(_ref("Run"), "The run"), 403, 404, params=[_RUN_ID])},
    "/runs/{runId}/records": {"get": _op("The run's output records as NDJSON", _NDJSON, 403, 404, 409,
                                         params=[_RUN_ID])},
    "/runs/{runId}/rejects": {"get": _op("Rejected rows as NDJSON {row, errors, raw}", _NDJSON, 403, 404, 409,
                                         params=[_RUN_ID])},
    "/runs/{runId}/ack": {"post": _op("Mark the run acknowledged", _json(_ref("Run"), "The run"), 403, 404,
                                      params=[_RUN_ID])},
    "/runs/{runId}/retry": {"post": _op(
        "Re-deliver failed destinations, or process the input again", _json(_ref("Run"), "The run"),
        400, 403, 404, 409, 413, params=[_RUN_ID], body=_body("Retry", required=False))},
    "/connections": {"get": _op("Connections this key may use (no secrets)", _json(
        _object(["data"], data={"type": "array", "items": _ref("Connection")}), "Connections"))},
    "/pipelines": {"get": _op("Pipelines of those connections", _json(
        _object(["data"], data={"type": "array", "items": _ref("Pipeline")}), "Pipelines"))},
    "/pipelines/{name}": {
        "get": _op("One pipeline", _json(_ref("Pipeline"), "The pipeline"), 403, 404, params=[_NAME]),
        "patch": _op("Switch a pipeline on or off (kept across restarts; on releases held runs)",
                     _json(_ref("Pipeline"), "The pipeline"), 400, 403, 404, 413, params=[_NAME],
                     body=_body("PipelinePatch")),
    },
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
