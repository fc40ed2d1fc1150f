"""`DueWork`: a daemon component that starts a task for each due row (a delivery, an event) and wakes
when told there is new work or when the earliest pending retry comes due. Shared by the dispatcher and
the event sender, which only say what is due and how to handle one item."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import aiohttp

from feedd import failpoints, log, supervisor
from feedd.config import Config
from feedd.model import utcnow
from feedd.store import Store

T = TypeVar("T")
IDLE = 5.0  # seconds between looks when nothing is due sooner


class DueWork(Generic[T]):
    name = "due"
    max_in_flight = 32

    def __init__(self, store: Store, timeout: float | None = None, owner: str | None = None) -> None:
        self._store = store
        # The node claiming the rows (see feedd.cluster): what it claims, no other node works on meanwhile.
        self.owner = owner
        self._timeout = timeout
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[Hashable, asyncio.Task[None]] = {}

    async def due(self) -> list[tuple[Hashable, T]]:
        """What is due now, each with a key that is never worked on twice at once."""
        raise NotImplementedError

    async def handle(self, item: T) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        # supervised: an error the loop does not expect (the store failing while it pauses) restarts it
        # instead of ending deliveries or events until the next restart of the daemon
        self._task = supervisor.supervise(self.name, self._loop)

    async def reload(self, config: Config) -> None:
        self.wake()

    async def stop(self, deadline: float) -> None:
        try:
            await supervisor.cancel(self._task)
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()),
                                   timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            for task in self._inflight.values():
                task.cancel()  # what is cut off stays pending in the store and is tried again at the next start
        finally:
            # whatever stopping the loop raised, the HTTP session (and its sockets) goes with it
            if self._session is not None:
                await self._session.close()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            failpoints.hit(f"due.{self.name}")
            try:
                for key, item in await self.due():
                    if key not in self._inflight and len(self._inflight) < self.max_in_flight:
                        task = asyncio.get_running_loop().create_task(self.handle(item))
                        self._inflight[key] = task
                        task.add_done_callback(self._done(key))
            except Exception:
                log.get().exception(f"{self.name}.loop_failed")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as the
            # event is set, and this loop would then never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(await self._pause()):
                    await self._wake.wait()

    def _done(self, key: Hashable) -> Callable[[asyncio.Task[None]], None]:
        reap = supervisor.reap(f"{self.name}.handle_crashed")

        def forget(task: asyncio.Task[None]) -> None:
            reap(task)
            self._inflight.pop(key, None)
            # an item whose handling crashed is still due: it is tried at the next pause, not at once and
            # again and again in a tight loop
            if task.cancelled() or task.exception() is None:
                self.wake()

        return forget

    async def _pause(self) -> float:
        nxt = await self._store.next_due(self.owner)
        return IDLE if nxt is None else min(IDLE, max(0.05, (nxt - utcnow()).total_seconds()))
