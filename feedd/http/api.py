"""What every route shares: the error body, API-key auth, and reading a small JSON body safely.

Errors are `{"error": {"code", "message"}}` with the statuses the README lists under "Side API (HTTP)",
whatever went wrong, including aiohttp's own (unknown route, wrong method). Keys are compared as sha256
digests in constant time, every configured key is tried (no early exit), and every failure answers the
same 401.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from feedd import log
from feedd.config import Config
from feedd.config.values import ApiKey
from feedd.durable import low_on_space
from feedd.errors import ConflictError, InvalidError, NotFoundError, StaleError
from feedd.store import Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_JSON_BODY = 1024 * 1024  # bodies other than parts are small documents
JSON_DEADLINE = 60.0  # seconds for such a body to arrive whole


class Routes:
    """What every group of routes holds: the live config (replaced in place on reload) and the store."""

    def __init__(self, live: Any, store: Store) -> None:
        self._live = live  # has `.config`
        self._store = store

    @property
    def config(self) -> Config:
        return self._live.config  # type: ignore[no-any-return]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details


class ClientGone(Exception):
    """The client's connection was lost (or cut) while its request was being read: nobody to answer."""


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(code, message), status=status, headers=headers)


_AIOHTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                  413: "too_large", 415: "unsupported_media_type"}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in the API's one shape; an unexpected one is logged and answered 500 without detail."""
    try:
        return await handler(request)
    except ApiError as exc:
        if exc.details is not None:
            body = error_body(exc.code, exc.message)
            body["error"]["details"] = exc.details
            return web.json_response(body, status=exc.status, headers=exc.headers)
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _AIOHTTP_CODES.get(exc.status, "error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, code, exc.reason if exc.status != 413 else "the body is too large",
                              headers)
    except Exception as exc:
        if isinstance(exc, ClientGone | ConnectionError) or request.transport is None \
                or request.transport.is_closing():
            # A client that went away (or a connection evicted to make room) is routine: one line, no
            # traceback; the answer below is not sent anywhere.
            log.get().info("http.client_gone", method=request.method, path=request.path, remote=request.remote,
                           error=f"{type(exc).__name__}: {exc}"[:200])
            return error_response(400, "client_gone", "the connection was lost while the request was read")
        log.get().exception("http.error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "the request failed inside feedd; see its log")


UNAUTHORIZED = ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer <key>)",
                        {"WWW-Authenticate": "Bearer"})


def authenticate(request: web.Request, config: Config) -> ApiKey:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UNAUTHORIZED
    digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).hexdigest()
    found: ApiKey | None = None
    for key in config.http.api_keys:
        if hmac.compare_digest(digest, key.key_sha256.lower()) and found is None:
            found = key
    if found is None:
        raise UNAUTHORIZED
    return found


def require_space(config: Config) -> None:
    """507 while the state's disk is under `sftp.min_free_space` (the same mark SFTP uploads obey)."""
    if (why := low_on_space((config.state_dir,), config.sftp.min_free_space)) is not None:
        raise ApiError(507, "insufficient_storage", why)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """feedd's own refusals, raised by the services a route calls, as the API's errors."""
    try:
        yield
    except InvalidError as exc:
        raise ApiError(422, exc.code, exc.message, details=exc.details) from None
    except NotFoundError as exc:
        raise ApiError(404, exc.code, exc.message) from None
    except ConflictError as exc:
        raise ApiError(409, exc.code, exc.message) from None
    except StaleError as exc:
        raise ApiError(412, exc.code, exc.message) from None


def require_admin(key: ApiKey) -> None:
    if not key.admin:
        raise ApiError(403, "forbidden", f"API key {key.name!r} has the role 'app'; this needs an 'admin' key")


def require_connection(key: ApiKey, connection: str) -> None:
    if not key.allows(connection):
        raise ApiError(403, "forbidden", f"this API key may not use connection {connection!r}")


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """A JSON object body of at most MAX_JSON_BODY bytes (400 otherwise; an empty optional body is {})."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, "too_large", f"the body is larger than {MAX_JSON_BODY} bytes")
    from feedd.http.limits import body_chunks  # that module builds on this one

    raw = bytearray()
    async for chunk in body_chunks(request, JSON_DEADLINE):  # the whole body, at a minimum rate
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise ApiError(413, "too_large", f"the body is larger than {MAX_JSON_BODY} bytes")
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_body", "a JSON object body is required")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_body", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return value


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """`body[name]` checked against `kind` (400 naming the field); None when absent and not required."""
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, "invalid_body", f"{name}: required")
        return None
    value = body[name]
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 2.0 is the integer 2
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, "invalid_body", f"{name}: expected {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "an array", dict: "an object"}


# Query parameters, parsed strictly (400 naming the parameter).


def query_boolean(text: str | None, name: str) -> bool | None:
    if text is None or text == "":
        return None
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, "invalid_query", f"{name}: expected true or false")


def query_integer(text: str | None, name: str, low: int, high: int, default: int) -> int:
    if text is None or text == "":
        return default
    # ASCII digits only, and short: int() takes other scripts' digits and refuses more than 4,300 digits
    if not (text.isascii() and text.isdigit() and len(text) <= 20) or not low <= int(text) <= high:
        raise ApiError(400, "invalid_query", f"{name}: expected an integer from {low} to {high}")
    return int(text)


def row_cursor(text: str | None) -> str | None:
    """A page cursor that is a row number (events, audit), or None for the first page."""
    if text and not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ApiError(400, "invalid_query", "cursor: expected the nextCursor of an earlier page")
    return text or None
