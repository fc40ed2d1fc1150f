"""The schedule: time-driven work in one supervised loop. It judges expected arrivals as their windows close
(feedd.arrivals), sweeps by retention at start and every `retention.sweep_every` (feedd.retention), and
keeps the partners' data specs current at start and at every change of the config (feedd.spec).

What it judged is in the store with the events it raised, in one transaction: a restart judges the windows
that closed while the daemon was down, and none twice. A partner's notice is written before that
transaction, under a name fixed by its window, so that a crash in between rewrites the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from feedd import arrivals, events, log, metrics, pgp, retention, spec, supervisor
from feedd.arrivals import Missed
from feedd.config import Config
from feedd.config.values import Expect, Pipeline
from feedd.durable import write_whole
from feedd.model import iso, utcnow
from feedd.spaces import Spaces
from feedd.store import Store

TICK = 60.0  # seconds between looks at most; sooner when a deadline comes sooner


class Scheduler:
    name = "schedule"

    def __init__(
        self,
        config: Callable[[], Config],
        store: Store,
        spaces: Spaces,
        notify: Callable[[], None] = lambda: None,
        *,
        clock: Callable[[], datetime] = utcnow,
        tick: float = TICK,
        leads: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._config = config
        # Whether this node does the time-driven work now: of the nodes sharing a store, one at a time does
        # (another takes over within a tick once it dies), so that a window is judged and a sweep run once.
        self._leads = leads
        self._store = store
        self._spaces = spaces
        self._notify = notify  # events were queued: the event sender should look
        self._clock = clock
        self._tick = tick
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_sweep: datetime | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self._write_specs(self._config())
        await self._pause_unexpected(self._config())
        self._task = supervisor.supervise(self.name, self._loop)

    async def reload(self, config: Config) -> None:
        await self._write_specs(config)
        await self._pause_unexpected(config)
        self.wake()

    async def _pause_unexpected(self, config: Config) -> None:
        """A pipeline that no longer expects files forgets what it was judged against: if it expects them
        again later, it is watched from then on."""
        for pipe in config.pipelines.values():
            if pipe.expect is None and (state := await self._store.arrival_state(pipe.name, missed=0)) and state.expect:
                await self._store.save_arrival_state(pipe.name, state.since, state.checked_until, expect="")

    async def stop(self, deadline: float) -> None:
        await supervisor.cancel(self._task)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            config = self._config()
            soonest = now + timedelta(seconds=self._tick)
            if self._leads is not None and not await self._leads():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._tick):
                        await self._wake.wait()
                continue
            for pipe in config.pipelines.values():
                if pipe.expect is None:
                    continue
                try:
                    due = await self.check(config, pipe, pipe.expect, now)
                except Exception:
                    log.get(pipeline=pipe.name).exception("arrivals.check_failed")
                    continue
                if due is not None:
                    soonest = min(soonest, due)
            if self._next_sweep is None or now >= self._next_sweep:
                self._next_sweep = now + timedelta(seconds=config.sweep_every)
                try:
                    await retention.sweep(config, self._store, self._spaces, now)
                except Exception:
                    log.get().exception("retention.sweep_failed")
            soonest = min(soonest, self._next_sweep)
            pause = min(self._tick, max(0.05, (soonest - self._clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def check(self, config: Config, pipe: Pipeline, expect: Expect, now: datetime) -> datetime | None:
        """Judge the pipeline's windows closed by `now`; the next deadline to look again at."""
        state = await self._store.arrival_state(pipe.name, missed=0)
        if state is None or state.expect != expect.key:
            # watched from now on (first seen, changed, or expected again after a pause): nothing before now
            # is judged, so a schedule put back after weeks does not report every window of the pause
            await self._store.save_arrival_state(pipe.name, now, None, expect=expect.key)
            return _next_deadline(expect, now)
        after = max(state.checked_until or state.since, state.since)
        windows, skipped = arrivals.closed(expect, after, now)
        logger = log.get(pipeline=pipe.name, connection=pipe.connection)
        if skipped:
            logger.warning(
                "arrivals.skipped",
                judged=len(windows),
                reason="more windows closed while the daemon was stopped than are judged at once; "
                "the older ones are not reported",
            )
        checked = state.checked_until
        missed: list[Missed] = []
        for w in windows:
            arrived, undecided, _ = arrivals.judge(
                await self._store.received(pipe.name, w.opens, w.deadline, expect.min_rows)
            )
            if undecided and not arrived and now < w.deadline + timedelta(seconds=arrivals.PENDING_WAIT):
                break  # a file of this window is still being processed: its outcome decides
            if not arrived and not undecided:
                last = await arrivals.last_arrival(self._store, pipe, expect, w.deadline)
                missed.append(Missed(w.expected_by, w.opens, w.deadline, last, now))
            checked = w.expected_by
        if checked == state.checked_until:
            return _next_deadline(expect, now)
        queued = []
        for m in missed:
            if expect.notify_partner:
                await self._notice(pipe, expect, m)
            queued += events.make(
                config,
                "arrival.missed",
                {
                    "pipeline": pipe.name,
                    "connection": pipe.connection,
                    "expectedBy": iso(m.expected_by),
                    "deadline": iso(m.deadline),
                    "opens": iso(m.opens),
                    "lastArrivalAt": iso(m.last_arrival_at),
                },
            )
        await self._store.save_arrival_state(pipe.name, state.since, checked, missed, queued, expect.key)
        for m in missed:
            metrics.ARRIVALS_MISSED.labels(pipe.name).inc()
            logger.warning(
                "arrival.missed",
                expected_by=iso(m.expected_by),
                deadline=iso(m.deadline),
                last_arrival_at=iso(m.last_arrival_at),
                notified=expect.notify_partner,
            )
        if queued:
            self._notify()
        return _next_deadline(expect, now)

    async def _notice(self, pipe: Pipeline, expect: Expect, m: Missed) -> None:
        space = self._spaces.get(pipe.connection)
        if space is None:
            return
        w = arrivals.Window(m.expected_by, m.opens, m.deadline)
        path = space.outbox / arrivals.notice_name(pipe, expect, w)
        data = arrivals.notice_text(pipe, expect, w, m.last_arrival_at).encode()
        seal = pgp.sealing(self._config(), pipe.connection)  # the partner's encrypt_to keys, if any
        if seal is not None:
            path = path.with_name(pgp.sealed_name(path.name))

        def write() -> int:
            before = path.stat().st_size if path.exists() else 0
            if seal is not None:
                return pgp.seal_bytes(seal, data, path).stat().st_size - before
            write_whole(path, data)
            return len(data) - before

        space.used = max(0, space.used + await asyncio.to_thread(write))  # the loop owns the count

    async def _write_specs(self, config: Config) -> None:
        outboxes = {s.name: s.outbox for s in self._spaces}
        try:
            grown = await asyncio.to_thread(spec.write_specs, config, outboxes)
        except (OSError, pgp.PgpError) as exc:  # a gpg that fails: logged, tried again at the next change
            log.get().warning("spec.write_failed", error=str(exc))
            return
        for name, delta in grown.items():
            space = self._spaces.get(name)
            if space is not None:
                space.used = max(0, space.used + delta)


def _next_deadline(expect: Expect, now: datetime) -> datetime | None:
    """When the window open at `now` closes: the first cron time whose deadline is still ahead, plus grace."""
    due = arrivals.due_after(expect, now - timedelta(seconds=expect.grace))
    return None if due is None else due + timedelta(seconds=expect.grace)
