"""The aiohttp application and its server component: routes are added here as capabilities land."""

from __future__ import annotations

from aiohttp import web

from feedd import log
from feedd.config import Config
from feedd.config.values import Address
from feedd.store import Store


class Live:
    """The config the app answers with; replaced in place on reload (aiohttp app state is frozen once started)."""

    def __init__(self, config: Config) -> None:
        self.config = config


LIVE = web.AppKey("live", Live)
STORE = web.AppKey("store", Store)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(config: Config, store: Store) -> web.Application:
    app = web.Application(client_max_size=config.http.max_part_size)
    app[LIVE] = Live(config)
    app[STORE] = store
    app.router.add_get("/healthz", healthz)
    return app


class HttpServer:
    """Listens on every `http.listen` address; `addresses` holds the bound ones after start."""

    name = "http"

    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._app = build_app(config, store)
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        self.addresses: list[Address] = []

    async def start(self) -> None:
        await self._runner.setup()
        for addr in self._config.http.listen:
            site = web.TCPSite(self._runner, addr.host, addr.port, reuse_address=True)
            await site.start()
            server = site._server  # aiohttp exposes the bound sockets only here (port 0 in tests)
            for sock in getattr(server, "sockets", None) or ():
                host, port = sock.getsockname()[:2]
                self.addresses.append(Address(host, port))
        for bound in self.addresses:
            log.get().info("listening", service="http", address=str(bound))

    async def reload(self, config: Config) -> None:
        if config.http.listen != self._config.http.listen:
            log.get().warning("http.listen changed: takes effect at the next restart")
        self._config = config
        self._app[LIVE].config = config

    async def stop(self, deadline: float) -> None:
        await self._runner.cleanup()
