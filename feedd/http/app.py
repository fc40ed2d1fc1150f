"""The aiohttp application (README, "Side API (HTTP)") and its server component: every route, the error middleware,
and the limits that keep slow or greedy clients from exhausting the daemon."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from feedd import __version__, log, metrics, proxyproto, supervisor
from feedd.config import Config
from feedd.config.values import Address
from feedd.console.app import Console, ConsoleParts
from feedd.errors import StartupError
from feedd.http import openapi, tls
from feedd.http.api import Handler, errors
from feedd.http.limits import InFlight
from feedd.http.manage import ManageApi, Releaser
from feedd.http.protocol import use_json_errors
from feedd.http.review import ReviewApi
from feedd.http.runs import EventsApi, Retrier, RunsApi
from feedd.http.tus import Tus
from feedd.http.uploads import Uploads
from feedd.http.views import ViewsApi
from feedd.live import Live as Owner
from feedd.review import Reviews
from feedd.sftp.auth import Bans
from feedd.store import Store

MAX_CONNECTIONS = 256  # open client connections; more wait in the listen backlog


class Live:
    """The config the app answers with; replaced in place on reload (aiohttp app state is frozen once started)."""

    def __init__(self, config: Config) -> None:
        self.config = config


LIVE = web.AppKey("live", Live)
STORE = web.AppKey("store", Store)


_CORS_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"
_CORS_REQUEST = ("Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, "
                 "Upload-Checksum, Upload-Defer-Length, Upload-Concat, X-HTTP-Method-Override, X-Requested-With")
_CORS_EXPOSE = ("Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, "
                "Upload-Offset, Upload-Length, Upload-Expires, Upload-Metadata, Feedd-Run-Id")


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for `/tus/` only, for the origins in `http.tus.cors_origins`: what a browser tus client needs."""
    origin = request.headers.get("Origin")
    allowed = request.app[LIVE].config.http.tus.cors_origins
    if origin is None or not request.path.startswith("/tus/") or not ("*" in allowed or origin in allowed):
        return await handler(request)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
        response.headers.update({"Access-Control-Allow-Methods": _CORS_METHODS,
                                 "Access-Control-Allow-Headers": _CORS_REQUEST, "Access-Control-Max-Age": "86400"})
    else:
        response = await handler(request)
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    return response


async def healthz(request: web.Request) -> web.Response:
    """200 while every long-lived task runs; 503 naming those that keep crashing."""
    failing = supervisor.current().failing()
    if failing:
        return web.json_response({"status": "failing", "failing": failing}, status=503)
    return web.json_response({"status": "ok"})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(__version__))


async def metrics_text(request: web.Request) -> web.Response:
    store = request.app[STORE]
    metrics.refresh(*await store.status_counts(), await store.event_counts())
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class Runs(Retrier, Releaser, Protocol):
    """What the app needs from the runner: retry a run, release a pipeline's held runs, wake it up."""

    def wake(self) -> None: ...


UPLOADS = web.AppKey("uploads", Uploads)
TUS = web.AppKey("tus", Tus)
IN_FLIGHT = web.AppKey("in_flight", InFlight)


def build_app(config: Config, store: Store, runs: Runs | None = None,
              accepted: Callable[[], None] | None = None, owner: Owner | None = None,
              reviews: Reviews | None = None, *, console: ConsoleParts | None = None,
              node: str = "") -> web.Application:
    # Bodies are streamed by the routes that take large ones; this cap only guards request.read()/json().
    live = Live(config)
    in_flight = InFlight(lambda: live.config)
    # errors before the caps, so that a 429 has the usual error body
    app = web.Application(client_max_size=config.http.max_part_size,
                          middlewares=[cors, errors, in_flight.middleware])
    app[LIVE] = live
    app[IN_FLIGHT] = in_flight
    app[STORE] = store
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/openapi.json", openapi_json)
    wake = accepted or (runs.wake if runs is not None else lambda: None)
    tus = app[TUS] = Tus(live, store, wake, node)
    tus.routes(app)
    uploads = app[UPLOADS] = Uploads(live, store, wake, sweepers=(tus.sweep,))
    uploads.routes(app)
    RunsApi(live, store, runs).routes(app)
    EventsApi(live, store).routes(app)
    ViewsApi(live, store).routes(app)
    ManageApi(live, store, owner, runs, node).routes(app)
    ReviewApi(live, store, reviews).routes(app)
    # The console is routed whatever `http.console` says, so that a reload can turn it on or off.
    Console(live, store, console or ConsoleParts(Bans(config.sftp.ban, store)), owner, runs, runs,
            reviews).routes(app)
    return app


def _cap_connections(server: web.Server | None) -> None:
    """At most MAX_CONNECTIONS open connections (aiohttp has no such limit). A new connection past it
    evicts the oldest one that has no request in progress (idle between requests, or still sending its
    headers), so that slow or silent clients cannot lock everyone else out; a request being handled,
    such as a part's body arriving, is never cut. Only when every connection is busy is the new one
    closed. (aiohttp itself closes a connection that has not sent whole headers within the keep-alive
    timeout.)"""
    if server is None:
        return
    accept = server.connection_made

    def capped(handler: Any, transport: Any) -> None:
        accept(handler, transport)
        if len(server.connections) <= MAX_CONNECTIONS:
            return
        # oldest first; aiohttp sets `_current_request` while it handles one (unknown: taken as busy)
        idle = next((h for h in server.connections
                     if h is not handler and getattr(h, "_current_request", handler) is None), None)
        if idle is None:
            # Closed once aiohttp has finished setting the connection up: closing its transport in the
            # middle of that left its request task failing an assertion, logged with a traceback.
            asyncio.get_running_loop().call_soon(handler.force_close)
            log.get().info("http.connection_refused", remote=_peer(transport), reason="every connection is busy")
        else:
            log.get().info("http.connection_evicted", remote=_peer(idle.transport), reason="idle, to make room")
            idle.force_close()

    setattr(server, "connection_made", capped)  # noqa: B010 - an instance hook, not a class change


def _peer(transport: Any) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else None


class HttpServer:
    """Listens on every `http.listen` address; `addresses` holds the bound ones after start."""

    name = "http"

    def __init__(self, config: Config, store: Store, runs: Runs | None = None,
                 accepted: Callable[[], None] | None = None, owner: Owner | None = None,
                 reviews: Reviews | None = None, *, console: ConsoleParts | None = None, node: str = "") -> None:
        self._config = config
        self._app = build_app(config, store, runs, accepted, owner, reviews, console=console, node=node)
        # keepalive_timeout closes idle connections; the backlog bounds what waits beyond them
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, keepalive_timeout=15)
        self.addresses: list[Address] = []
        self._ssl: ssl.SSLContext | None = None
        self._proxied: list[proxyproto.Listener] = []  # with http.proxy_protocol on, in place of aiohttp's sites

    async def start(self) -> None:
        if self._config.http.tls is not None:
            self._ssl = tls.server_context(self._config.http.tls)
        await self._runner.setup()
        use_json_errors(self._runner.server)
        _cap_connections(self._runner.server)
        if self._config.http.proxy_protocol:
            await self._start_proxied()
        else:
            for addr in self._config.http.listen:
                site = web.TCPSite(self._runner, addr.host, addr.port, reuse_address=True, backlog=MAX_CONNECTIONS,
                                   ssl_context=self._ssl)
                await site.start()
                server = site._server  # aiohttp exposes the bound sockets only here (port 0 in tests)
                for sock in getattr(server, "sockets", None) or ():
                    host, port = sock.getsockname()[:2]
                    self.addresses.append(Address(host, port))
        await self._app[TUS].start()
        await self._app[UPLOADS].start()
        for bound in self.addresses:
            log.get().info("listening", service="http", address=str(bound), tls=self._ssl is not None)

    async def _start_proxied(self) -> None:
        """Listeners that read each connection's PROXY header (then TLS, if on) before aiohttp's protocol
        gets it, so `request.remote` is the partner's address rather than the balancer's."""
        server = self._runner.server
        assert server is not None  # set up by AppRunner.setup
        for addr in self._config.http.listen:
            listener = proxyproto.Listener("http", server, ssl_context=self._ssl, backlog=MAX_CONNECTIONS)
            self._proxied.append(listener)
            await listener.start(addr.host, addr.port)
            for sock in listener.sockets:
                host, port = sock.getsockname()[:2]
                self.addresses.append(Address(host, port))

    async def reload(self, config: Config) -> None:
        for key in ("listen", "proxy_protocol"):
            if getattr(config.http, key) != getattr(self._config.http, key):
                log.get().warning(f"http.{key} changed: takes effect at the next restart")
        if (config.http.tls is None) != (self._ssl is None):
            log.get().warning("http.tls turned on or off: takes effect at the next restart")
        elif self._ssl is not None and config.http.tls is not None:
            # a renewed certificate is taken on reload, without a restart; a bad one keeps the old
            try:
                tls.server_context(config.http.tls)  # tried apart first: a failed load can leave half of it
                tls.load(self._ssl, config.http.tls)
            except StartupError as exc:
                log.get().error("http.tls not reloaded", error=exc.message)
        self._config = config
        self._app[LIVE].config = config

    async def stop(self, deadline: float) -> None:
        for listener in self._proxied:
            listener.close()
        for listener in self._proxied:
            await listener.wait_closed()
        await self._app[UPLOADS].stop()
        await self._runner.cleanup()
