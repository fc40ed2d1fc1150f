"""The side port's connection handling below the routes: requests aiohttp refuses before any route runs
(malformed request lines or headers) get the API's JSON error body and one escaped log line, never
aiohttp's plain-text answer and traceback."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from feedd import log
from feedd.http.api import error_body

_CODES = {400: "bad_request", 408: "request_timeout", 413: "too_large", 431: "headers_too_large",
          500: "internal_error", 504: "timeout"}
MAX_DETAIL = 300  # characters of the parser's complaint kept in the log line


def _reason(status: int, exc: BaseException | None, message: str | None) -> tuple[str, str]:
    """(a one-line message for the client, the parser's whole complaint for the log)."""
    if isinstance(exc, HttpProcessingError):
        detail = exc.message or ""
    else:
        detail = message or (f"{type(exc).__name__}: {exc}" if exc is not None else "")
    if status >= 500:
        return "the request failed inside feedd; see its log", detail[:MAX_DETAIL]
    # the first line names the problem; the rest quotes the client's bytes, which the client already has
    first = detail.strip().splitlines()[0].rstrip(":").strip() if detail.strip() else "malformed request"
    return f"malformed HTTP request: {first[:120]}", detail[:MAX_DETAIL]


class JsonErrorProtocol(RequestHandler):
    """aiohttp's protocol with `handle_error` answering the API's JSON error body."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        text, detail = _reason(status, exc, message)
        logger = log.get()
        if status >= 500:
            logger.error("http.error", status=status, remote=request.remote, error=detail)
        else:
            logger.info("http.bad_request", status=status, remote=request.remote, error=detail)
        if request.writer.output_size > 0:  # as aiohttp does: a response is under way, nothing more to say
            raise ConnectionError("a response was already being sent; cannot send the error")
        resp = web.json_response(error_body(_CODES.get(status, "bad_request"), text), status=status)
        resp.force_close()
        return resp


class JsonErrorServer(web.Server):
    """A `web.Server` whose connections use `JsonErrorProtocol`."""

    def __call__(self) -> RequestHandler:
        return JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


def use_json_errors(server: web.Server | None) -> None:
    """Make the runner's server (already built by `AppRunner.setup`) hand out `JsonErrorProtocol`s.
    aiohttp builds the server inside the runner with no hook for the protocol class; the subclass adds
    no state, so switching the instance's class is safe."""
    if server is not None and type(server) is web.Server:
        server.__class__ = JsonErrorServer
