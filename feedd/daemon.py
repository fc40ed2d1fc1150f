"""The composition root: builds the parts, starts them in order, stops them in reverse; signals and sd_notify.

Order: store -> runner -> schedule -> ingress (http, sftp, watcher). Ingress starts last so that
nothing is accepted before the parts that record and process it are up, and stops first so that nothing
new arrives while the rest drains.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from feedd import hostkeys, intake, log, metrics, pgp, schedule, sdnotify, supervisor
from feedd.cluster import Cluster, new_node_id, recoverable, shared
from feedd.config import Config, load_config
from feedd.config.parse import read_file
from feedd.console.app import ConsoleParts
from feedd.delivery.dispatcher import Dispatcher
from feedd.drops import Drops
from feedd.errors import ConfigError, FeeddError
from feedd.events import EventSender
from feedd.http.app import HttpServer
from feedd.live import Live
from feedd.model import utcnow
from feedd.pipeline.runner import Runner
from feedd.review import Reviews, base_url, review_path
from feedd.schedule import Scheduler
from feedd.sftp.auth import Bans
from feedd.sftp.service import SftpService
from feedd.sharing import Sharing
from feedd.spaces import Spaces
from feedd.store import Store, configured
from feedd.summary import next_steps
from feedd.watcher import Watcher

DRAIN_SECONDS = 30.0  # README, "Install as a systemd service": running work reaches a safe point within 30 s of SIGTERM
# Bits always cleared from the mode of what feedd creates (uploads, spool, run outputs, the database):
# systemd's unit sets this umask, and a daemon started from a shell (usually 0022) must not make its
# partners' data world-readable. A stricter umask the daemon is started with is kept.
UMASK = 0o027


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def reload(self, config: Config) -> None: ...

    async def stop(self, deadline: float) -> None:
        """Stop; work in flight may use the time until `deadline` (event-loop time) to reach a safe point."""


class Daemon:
    """Owns the parts. `run()` is `feedd serve`; `start()`/`stop()` let tests run it in-process."""

    def __init__(self, config: Config, *, drain_seconds: float = DRAIN_SECONDS, workers: int | None = None,
                 clock: Callable[[], datetime] = utcnow, tick: float = schedule.TICK) -> None:
        self._initial = config
        self._clock = clock  # what the schedule takes as now (tests move it through windows)
        self._tick = tick
        self.live: Live | None = None
        self.drain_seconds = drain_seconds
        self.workers = workers
        self.components: list[Component] = []
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.store: Store | None = None
        self.spaces: Spaces | None = None
        self.drops: Drops | None = None
        self.http: HttpServer | None = None
        self.sftp: SftpService | None = None
        self.reviews: Reviews | None = None
        self.scheduler: Scheduler | None = None
        self.cluster: Cluster | None = None
        self.node_id = ""

    @property
    def config(self) -> Config:
        """The config in force: the file's as given until the store's objects have joined it at start."""
        return self.live.config if self.live is not None else self._initial

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit code."""
        os.umask(os.umask(UMASK) | UMASK)  # before any file, thread or worker process is made
        loop = asyncio.get_running_loop()
        # Handlers go in before any part starts: a TERM during start-up still ends in a clean stop.
        for sig, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                             (signal.SIGHUP, self._on_hup)):
            loop.add_signal_handler(sig, handler)
        try:
            try:
                await self.start()
                sdnotify.notify("READY=1", "STATUS=serving")
                log.get().info("ready", config=str(self.config.path), state_dir=str(self.config.state_dir),
                               event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
                self._tell_next_steps()
                if (interval := sdnotify.watchdog_interval()) is not None:
                    self._spawn(self._watchdog(interval))
                await self._stop.wait()
                sdnotify.notify("STOPPING=1")
                log.get().info("stopping", drain_seconds=self.drain_seconds)
            finally:
                await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.get().info("stopped")
        return 0

    def _tell_next_steps(self) -> None:
        """Where a new user goes from here: logged, and one plain line on a terminal's stderr (the log
        itself may be JSON, or on stdout where the eye does not look)."""
        steps = next_steps(self.config, self.sftp.addresses if self.sftp else [],
                           self.http.addresses if self.http else [])
        log.get().info("next steps", **steps)
        if sys.stderr.isatty():
            print(f"feedd: SFTP on {steps.get('sftp', '-')}, HTTP on {steps.get('http', '-')}. {steps['next']}",
                  file=sys.stderr)

    async def start(self) -> None:
        """Start every part in order; on failure, stop what started and raise."""
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        keys, generated = hostkeys.ensure(config, state_exists=await configured.state_exists(config))
        for key in keys:
            log.get().info("host key generated" if generated else "host key", fingerprint=key.fingerprint,
                           algorithm=key.algorithm, path=str(key.path))
        self.store = store = await configured.open_store(config)
        try:
            await configured.record_host_key(config, keys[0].fingerprint)
        except BaseException:
            await self.stop()
            raise
        try:
            self.live = live = await Live.open(await asyncio.to_thread(read_file, config.path), config, store,
                                               self._apply)
        except BaseException:
            await self.stop()
            raise
        config = live.config
        self.node_id = node_id = new_node_id()
        metrics.name_node(node_id)
        await intake.recover(store, config, before=recoverable(config))
        self.spaces = spaces = Spaces(config)
        sender = EventSender(lambda: self.config, store, owner=node_id)
        live.on_change(sender.wake)
        dispatcher = Dispatcher(lambda: self.config, store, spaces, sender.wake, owner=node_id)

        def base() -> str:  # links into the console name the port as bound (`listen` may say port 0)
            return base_url(self.config, self.http.addresses if self.http is not None else ())

        runner = Runner(lambda: self.config, store, spaces, workers=self.workers, deliver=dispatcher.wake,
                        notify=sender.wake, review_url=lambda run_id: base() + review_path(run_id), owner=node_id)
        self.cluster = Cluster(lambda: self.config, store, node_id,
                               {"runs": runner.wake, "deliveries": dispatcher.wake, "events": sender.wake},
                               info=self._addresses, refresh=live.refresh)
        self.reviews = reviews = Reviews(lambda: self.config, store, runner, spaces, base, notify=sender.wake)

        def accepted() -> None:  # a new run (and its event) is in the store
            runner.wake()
            sender.wake()

        self.scheduler = Scheduler(lambda: self.config, store, spaces, sender.wake, clock=self._clock,
                                   tick=self._tick, leads=lambda: self._leads("schedule"))
        self.drops = drops = Drops(lambda: self.config, store, spaces, accepted)
        bans = Bans(config.sftp.ban, store)  # SFTP and console logins count toward the same bans

        def logins() -> list[tuple[str, str, float]]:
            return self.sftp.logins() if self.sftp is not None else []

        self.http = HttpServer(config, store, runner, accepted, live, reviews,
                               console=ConsoleParts(bans, spaces, logins, node_id), node=node_id)
        self.sftp = SftpService(config, spaces, drops, [k.path for k in keys], bans)
        parts: list[Component] = [
            self.cluster,  # first: the work a dead node held is back in the queue before the runner looks
            sender,
            dispatcher,
            runner,
            self.scheduler,
            Sharing(config, store, bans, spaces),  # before the services: bans in force when they listen
            self.http,
            self.sftp,
            Watcher(lambda: self.config, spaces, drops, leads=lambda: self._leads("scan")),
        ]
        try:
            for component in parts:
                await component.start()
                self.components.append(component)
            await self.cluster.announce()  # now with the addresses it serves on
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the parts in reverse order, giving work in flight until the drain deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_seconds
        try:
            for component in reversed(self.components):
                try:
                    await component.stop(deadline)
                except Exception:
                    log.get().exception("stop failed", component=component.name)
            self.components = []
            if self.drops is not None:
                await self.drops.drain(deadline)
        finally:
            # Even when stopping is itself interrupted: the store's thread would otherwise keep the
            # process from exiting, and its last commits must reach the disk.
            for task in list(self._tasks):
                task.cancel()
            if self.store is not None:
                store, self.store = self.store, None
                await store.close()
            # gpg starts an agent per connection's GnuPG home, which would outlive the daemon
            await asyncio.to_thread(pgp.stop_agents, self.config.state_dir)

    def _addresses(self) -> dict[str, object]:
        """Where this node serves, for the cluster's list of nodes."""
        return {"sftp": [f"{a.host}:{a.port}" for a in self.sftp.addresses] if self.sftp else [],
                "http": [f"{a.host}:{a.port}" for a in self.http.addresses] if self.http else []}

    async def _leads(self, work: str) -> bool:
        """Whether this node does `work` now: the reconciliation scans of the spaces ("scan", the other
        nodes see the same files) and the schedule ("schedule") run on one node at a time."""
        return not shared(self.config) or (self.store is not None and await self.store.lead(work))

    def request_stop(self) -> None:
        self._stop.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(supervisor.reap("daemon.task_crashed"))

    def _on_hup(self) -> None:
        self._spawn(self.reload())

    async def reload(self) -> bool:
        """Re-read the config file; a bad one is logged with all its errors and the old one stays."""
        if self.live is None:
            return False
        sdnotify.reloading()
        try:
            return await self.live.reload_file()
        finally:
            sdnotify.notify("READY=1", "STATUS=serving")

    async def _apply(self, config: Config) -> None:
        """Put a new config in force in every part (the config's owner calls this, then swaps)."""
        if config.store != self.config.store:  # the store holds what is running: it is opened once
            log.get().warning("store changed: takes effect at the next restart")
        if self.spaces is not None:
            self.spaces.apply(config)  # new connections get their space before they can log in
        for component in self.components:
            await component.reload(config)
        log.configure(config.log.level, config.log.format)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: if the loop is blocked, the pings stop and systemd restarts us.
        # So do they while a task keeps crashing: a restart is the likeliest cure (a wedged store
        # connection, a leaked resource), and systemd counts and reports it.
        silent = False
        while True:
            failing = supervisor.current().failing()
            if not failing:
                sdnotify.notify("WATCHDOG=1")
            elif not silent:
                log.get().error("watchdog.withheld", failing=failing, action="systemd restarts the service")
                sdnotify.notify(f"STATUS=failing: {', '.join(failing)}")
            silent = bool(failing)
            await asyncio.sleep(interval)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop, installed with feedd where it has wheels: less overhead per SFTP packet (see the README's
    Performance section for what it is worth). `FEEDD_EVENT_LOOP=asyncio` chooses the standard loop."""
    if os.environ.get("FEEDD_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def serve(config_path: str | Path) -> int:
    """`feedd serve`: exit 0 after a clean stop, 2 for a bad config, 1 when the daemon cannot start."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"feedd: the config has {len(exc.issues)} error(s):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
    log.configure(config.log.level, config.log.format)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(Daemon(config).run())
    except ConfigError as exc:  # the store's objects clash with the file's, or do not judge well with them
        print(f"feedd: the config has {len(exc.issues)} error(s):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        log.get().error("cannot start", error=str(exc))
        return 2
    except FeeddError as exc:
        print(f"feedd: {exc}", file=sys.stderr)
        log.get().error("cannot start", error=str(exc))
        return 1
    except OSError as exc:
        print(f"feedd: cannot start: {exc}", file=sys.stderr)
        log.get().error("cannot start", error=str(exc))
        return 1

