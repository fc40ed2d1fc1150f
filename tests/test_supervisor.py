"""The supervisor on its own: restarts with doubling pauses, marks a task that keeps crashing as failing,
clears the mark once it runs long enough, and lets its owner stop it."""

from __future__ import annotations

import asyncio
import itertools
import time

from feedd import metrics
from feedd.supervisor import Policy, Supervisor, cancel
from tests.sftp.logs import capture_logs, events, wait_for

FAST = Policy(first_pause=0.05, most_pause=0.2, healthy_after=0.5, crashes=3, window=60.0)


def failing_gauge(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value("feedd_task_failing", {"task": name})
    assert value is not None
    return value


async def test_a_task_that_crashes_is_restarted_after_doubling_pauses() -> None:
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(time.monotonic())
        if len(starts) <= 4:
            raise RuntimeError(f"crash {len(starts)}")

    with capture_logs() as logs:
        task = Supervisor(FAST).spawn("test.flaky", flaky)
        await asyncio.wait_for(task, 30)  # it ends once the coroutine returns
    assert len(starts) == 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for gap, least in zip(gaps, (0.05, 0.1, 0.2, 0.2), strict=True):  # 0.05 doubling, at most 0.2
        assert gap >= least * 0.9, gaps
    crashed = events(logs, "task.crashed")
    assert [e["component"] for e in crashed] == ["test.flaky"] * 4
    assert "RuntimeError: crash 1" in crashed[0]["exception"]  # logged once each, with the traceback
    restarts = metrics.REGISTRY.get_sample_value("feedd_task_restarts_total", {"task": "test.flaky"})
    assert restarts == 4


async def test_a_task_that_keeps_crashing_is_failing_until_it_runs_long_enough() -> None:
    supervisor = Supervisor(FAST)
    broken = asyncio.Event()
    broken.set()
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if broken.is_set():
            raise OSError("the store is gone")
        await asyncio.Event().wait()  # runs until cancelled

    task = supervisor.spawn("test.loop", loop)
    try:
        await wait_for(lambda: supervisor.failing() == ["test.loop"])
        assert failing_gauge("test.loop") == 1
        broken.clear()  # the cause goes away: the next start keeps running
        await wait_for(lambda: supervisor.failing() == [])
        assert failing_gauge("test.loop") == 0 and not task.done()
    finally:
        await cancel(task)
    assert task.cancelled() and runs >= FAST.crashes + 1
