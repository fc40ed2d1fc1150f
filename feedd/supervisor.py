"""The supervisor of the daemon's long-lived tasks (the runner's claim loop, the due-work loops, the
watcher, the SFTP idle-close loop, the upload sweeper).

A task that raises is logged once with its traceback (`task.crashed`) and started again after a pause
that doubles from FIRST_PAUSE to MOST_PAUSE (back to FIRST_PAUSE once it has run HEALTHY_AFTER seconds).
A task that crashes CRASHES times within WINDOW seconds is *failing*: `/healthz` answers 503 naming it,
the metric `feedd_task_failing{task=...}` is 1, and the daemon stops its systemd watchdog pings so that
systemd restarts the service. It keeps being restarted meanwhile, and is no longer failing once it has
run HEALTHY_AFTER seconds without a crash.

There is one supervisor per event loop (`current()`): the parts that start tasks and the parts that
report on them (`/healthz`, the watchdog) meet there without being wired to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from feedd import log, metrics

FIRST_PAUSE = 0.1  # seconds before the first restart
MOST_PAUSE = 30.0
HEALTHY_AFTER = 60.0  # seconds a restarted task must run for its pause and failing mark to reset
CRASHES = 5
WINDOW = 300.0


@dataclass(frozen=True, slots=True)
class Policy:
    first_pause: float = FIRST_PAUSE
    most_pause: float = MOST_PAUSE
    healthy_after: float = HEALTHY_AFTER
    crashes: int = CRASHES
    window: float = WINDOW


@dataclass(slots=True)
class _State:
    crashes: deque[float] = field(default_factory=deque)  # monotonic times of the recent crashes
    failing: bool = False


class Supervisor:
    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self._states: dict[str, _State] = {}

    def failing(self) -> list[str]:
        """The tasks that keep crashing, by name."""
        return sorted(name for name, state in self._states.items() if state.failing)

    def spawn(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run `factory()` as the task `name`, started again whenever it raises. The task ends when the
        coroutine returns or the task is cancelled (how its owner stops it)."""
        state = self._states.setdefault(name, _State())
        metrics.TASK_FAILING.labels(name).set(1 if state.failing else 0)
        return asyncio.get_running_loop().create_task(self._keep(name, factory), name=f"feedd:{name}")

    async def _keep(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        policy = self.policy
        state = self._states[name]
        pause = policy.first_pause
        loop = asyncio.get_running_loop()
        while True:
            started = time.monotonic()
            healthy = loop.call_later(policy.healthy_after, self._healthy, name)
            try:
                await factory()
                return
            except Exception:
                log.get(component=name).exception("task.crashed", restart_in=round(pause, 3))
            finally:
                healthy.cancel()
            now = time.monotonic()
            if now - started >= policy.healthy_after:
                pause = policy.first_pause
            metrics.TASK_RESTARTS.labels(name).inc()
            state.crashes.append(now)
            while state.crashes and now - state.crashes[0] > policy.window:
                state.crashes.popleft()
            if len(state.crashes) >= policy.crashes and not state.failing:
                state.failing = True
                metrics.TASK_FAILING.labels(name).set(1)
                log.get(component=name).error("task.failing", crashes=len(state.crashes),
                                              window_seconds=policy.window)
            await asyncio.sleep(pause)
            pause = min(pause * 2, policy.most_pause)

    def _healthy(self, name: str) -> None:
        state = self._states[name]
        state.crashes.clear()
        if state.failing:
            state.failing = False
            metrics.TASK_FAILING.labels(name).set(0)
            log.get(component=name).info("task.recovered")


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Supervisor] = weakref.WeakKeyDictionary()


def current() -> Supervisor:
    """The running event loop's supervisor."""
    loop = asyncio.get_running_loop()
    found = _PER_LOOP.get(loop)
    if found is None:
        found = _PER_LOOP[loop] = Supervisor()
    return found


def supervise(name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    """`current().spawn(name, factory)`."""
    return current().spawn(name, factory)


def reap(what: str, **context: Any) -> Callable[[asyncio.Task[Any]], None]:
    """A done callback that logs a short-lived task's exception, which nobody awaits, once, with its
    traceback (instead of asyncio's "exception was never retrieved" at garbage collection, or nothing)."""
    def done(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.get(**context).error(what, exc_info=exc)

    return done


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a supervised task and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
