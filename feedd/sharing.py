"""What the nodes of one store keep a copy of in memory and agree on through the store: the bans in force
and the bytes used in each space (README, "Several nodes").

Both are read on hot paths (a ban on every new connection, a quota on every SFTP write), where a round
trip to the store would cost too much, so each node works on its copy and this loop brings the copies
together every SYNC_SECONDS: it reads the bans and unbans other nodes recorded, and it adds what this node
wrote and removed in each space to the shared figure, reading back every node's sum. A node thus sees
the others' bytes within about two rounds, and a quota may be overshot by at most what the other nodes
wrote into that space meanwhile.

With SQLite (one node, nobody to agree with) the bans are still kept in the store, and read at start, but
nothing is polled: the counts stay in memory as they always were.
"""

from __future__ import annotations

import asyncio
import contextlib

from feedd import log, supervisor
from feedd.config import Config
from feedd.config.values import StoreType
from feedd.sftp.auth import Bans
from feedd.spaces import Spaces
from feedd.store import Store

SYNC_SECONDS = 0.5


class Sharing:
    """The daemon's component that keeps this node's bans and space counts in step with the other nodes'."""

    name = "sharing"

    def __init__(self, config: Config, store: Store, bans: Bans, spaces: Spaces) -> None:
        self._shared = config.store.type is StoreType.POSTGRESQL
        self._store = store
        self._bans = bans
        self._spaces = spaces
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self._bans.refresh()  # bans made before this start (by another node, or before a restart)
        if self._shared:
            await self.sync_spaces()  # the recount of each space made at start is the shared figure now
            self._task = supervisor.supervise("sharing.sync", self._loop)

    async def reload(self, config: Config) -> None:
        return None

    async def stop(self, deadline: float) -> None:
        # Not cancelled in the middle of a round: one cut short after the store added this node's changes,
        # but before they were marked shared, would have them added again by the last round below.
        self._stopping.set()
        if self._task is not None:
            left = max(0.1, deadline - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait([self._task], timeout=left)
            if not done:  # a store that does not answer: what this node counted since is lost to the others
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                return
            self._task = None
            left = max(0.1, deadline - asyncio.get_running_loop().time())
            with contextlib.suppress(Exception):  # what it wrote last goes to the others, if the store is up
                await asyncio.wait_for(self.sync_spaces(), timeout=left)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=SYNC_SECONDS)
                return
            await self._bans.refresh()
            await self.sync_spaces()

    async def sync_spaces(self) -> None:
        """Give the store each space's recount (a space made since the last round) and this node's changes
        since, and take back every node's sum. Every node sees the same disk, so a recount replaces the
        shared figure rather than adding to it."""
        store = self._store
        spaces = list(self._spaces)
        for space in spaces:
            if space.recounted:
                recount = space.shared_used
                space.recounted = False
                try:
                    await store.set_space_use(space.name, recount)
                except BaseException:
                    space.recounted = True
                    raise
        deltas = {space.name: space.unshared for space in spaces if space.unshared}
        totals = await store.add_space_use(deltas) if deltas else await store.space_use()
        for space in spaces:
            # Changes made while the store was answering stay in `unshared`, for the next round.
            space.unshared -= deltas.get(space.name, 0)
            if space.name in totals and not space.recounted:
                space.shared_used = totals[space.name]
        if deltas:
            log.get().debug("sharing.spaces_synced", changed=len(deltas))
