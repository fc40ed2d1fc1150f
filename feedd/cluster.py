"""`Cluster`: this process as one node among those sharing the store.

It owns the node's identity, its heartbeat, and the taking over of work: every `takeover_after / 3` the node
says it is alive, and gives back to everyone the work of the nodes whose heartbeat is older than
`takeover_after` (their runs queued again, their deliveries and events free to be claimed). On a clean stop
it gives its own work back at once. With a store that other nodes share, it also listens for their word that
work is ready (woken early; polling stays behind it), and the node that takes over a dead one takes in the
spool files that node died with before recording their runs.

With SQLite the store has one process: whatever a previous run of it held is given back at start, as a
restart always did.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta

from feedd import intake, log, supervisor
from feedd.config import Config
from feedd.config.values import StoreType
from feedd.model import Node, TakenOver, id_floor, utcnow
from feedd.store import Store


def new_node_id() -> str:
    """Host, pid and a random part: a node restarted with the same pid (a container's 1) is a new node."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def shared(config: Config) -> bool:
    """Whether other processes may share the store (and the spool with it)."""
    return config.store.type is StoreType.POSTGRESQL


def recoverable(config: Config) -> str | None:
    """The run id under which a spool file without a run is an orphan to take in again (None: any).

    Alone on the store, every such file is. Shared, a file a live node is recording right now has no run
    yet either; a node takes well under `takeover_after / 2` to record one, and a dead node is found dead
    `takeover_after` after its last heartbeat, at most `takeover_after / 3` before it died: so a file older
    than half of it is no live node's.
    """
    if not shared(config):
        return None
    return id_floor(utcnow() - timedelta(seconds=config.cluster.takeover_after / 2))


class Cluster:
    name = "cluster"

    def __init__(self, config: Callable[[], Config], store: Store, node_id: str,
                 wake: dict[str, Callable[[], None]], info: Callable[[], dict[str, object]] = dict,
                 refresh: Callable[[], Awaitable[object]] | None = None) -> None:
        self._config = config
        # Takes in the objects other nodes changed over the API (woken by them; also looked at every beat).
        self._refresh = refresh
        self._refreshing: asyncio.Task[None] | None = None
        self._again = False  # a look was asked for while one ran
        self._store = store
        self.node_id = node_id
        self._wake = wake  # "runs" / "deliveries" / "events" -> the part that does that work
        self._info = info
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        config = self._config()
        await self.announce()
        # Alone on the store, every other node recorded is this daemon's earlier life, dead.
        await self._take_over(config.cluster.takeover_after if shared(config) else 0.0)
        self._tasks.append(supervisor.supervise(self.name, self._beat))
        if shared(config):
            self._tasks.append(supervisor.supervise(f"{self.name}.listen", self._listen))
        log.get().info("cluster.joined", node=self.node_id, shared=shared(config))

    async def announce(self) -> None:
        """Tell the other nodes about this one afresh (once it knows the addresses it serves on)."""
        now = utcnow()
        await self._store.join(Node(self.node_id, now, now, self._about()))

    async def reload(self, config: Config) -> None:
        pass  # the interval is read each beat

    async def stop(self, deadline: float) -> None:
        for task in self._tasks:
            await supervisor.cancel(task)
        self._tasks = []
        await supervisor.cancel(self._refreshing)
        # Bounded by the drain deadline: with the store out of reach, the others take this node's work over
        # after takeover_after anyway, and a stop must not wait for a connection that will not come.
        within = max(1.0, deadline - asyncio.get_running_loop().time())
        try:
            given = await asyncio.wait_for(self._store.leave(self.node_id), within)
        except Exception as exc:  # leaving is a courtesy: what it would give back is taken over, not lost
            error = f"store not reached in {within:.1f}s" if isinstance(exc, TimeoutError) else str(exc)
            log.get().warning("cluster.leave_failed", node=self.node_id, error=error,
                              action="other nodes take this node's work over after cluster.takeover_after")
            return
        if given.runs:
            log.get().info("cluster.left", node=self.node_id, runs=len(given.runs))
            self._tell(given, "given back")

    def _about(self) -> dict[str, object]:
        return {"host": socket.gethostname(), "pid": os.getpid(), **self._info()}

    async def _beat(self) -> None:
        while True:
            config = self._config()
            await asyncio.sleep(config.cluster.takeover_after / 3)
            if not await self._store.heartbeat(self.node_id, utcnow()):
                # Taken for dead (a pause longer than takeover_after): what it held went to others, and
                # the writes that would finish that work are refused. It carries on as a node again.
                log.get().warning("cluster.rejoined", node=self.node_id,
                                  reason="this node was taken for dead; its work went to other nodes")
                await self.announce()
            if shared(config):
                self._refresh_objects()
            if await self._take_over(config.cluster.takeover_after):
                # What the dead took into the spool but did not record is taken in again.
                await intake.recover(self._store, config, before=recoverable(config))

    async def _take_over(self, after: float) -> bool:
        """Give back the work of the nodes dead `after` seconds; True when there were any."""
        dead = await self._store.take_over(utcnow() - timedelta(seconds=after), self.node_id)
        for taken in dead:
            log.get().warning("cluster.took_over", dead=taken.node_id or "(none recorded)", runs=len(taken.runs),
                              deliveries=taken.deliveries, events=taken.events)
            self._tell(taken, "taken over")
            for kind in ("runs", "deliveries", "events"):
                self._wake.get(kind, _nothing)()
        return bool(dead)

    @staticmethod
    def _tell(taken: TakenOver, how: str) -> None:
        for run_id in taken.runs:
            log.get(run_id=run_id).info("run.resumed", how=how, node=taken.node_id or None)

    def _refresh_objects(self) -> None:
        """Look at the store's objects, one look at a time; a look asked for while one runs comes after it
        (the running one may have read the objects before the change that asked)."""
        if self._refresh is None:
            return
        if self._refreshing is not None and not self._refreshing.done():
            self._again = True
            return

        async def look(refresh: Callable[[], Awaitable[object]]) -> None:
            while True:
                self._again = False
                await refresh()
                if not self._again:
                    return

        self._refreshing = asyncio.get_running_loop().create_task(look(self._refresh))
        self._refreshing.add_done_callback(supervisor.reap("cluster.refresh_failed"))

    async def _listen(self) -> None:
        def woken(kind: str) -> None:
            if kind == "objects":
                self._refresh_objects()
            self._wake.get(kind, _nothing)()

        await self._store.listen(woken)


def _nothing() -> None:
    pass
