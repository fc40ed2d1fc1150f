"""The runner: claims queued runs, processes them in worker processes, records the outcome.

Parsing and validation never run on the event loop that serves SFTP: each run goes to a process pool
(one worker per core by default). A large upload that finds workers idle is processed in stretches, one
per idle worker, then joined (see `process.merge`). A run whose worker dies fails with `worker_died`
instead of hanging.
Runs left `processing` by a crash are queued again at start: a restart resumes every unfinished run.
A run its pipeline's `review` sends to a person rests in `needs_review` (never claimed, never requeued)
until a decision queues it again with the reviewer's mapping (`pipeline.decision`) or fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import secrets
import shutil
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from feedd import events, failpoints, log, metrics, pgp, supervisor
from feedd.config import Config
from feedd.config.values import Pipeline
from feedd.delivery.local import place_outbox
from feedd.durable import fit_name
from feedd.model import (
    Counts,
    Delivery,
    DeliveryStatus,
    Direction,
    RowError,
    Run,
    RunError,
    RunStatus,
    SourceKind,
    utcnow,
)
from feedd.pipeline import decision
from feedd.pipeline.process import Job, Outcome, Span, headers_key, merge, output_name, process, process_stretch
from feedd.reports import receipt
from feedd.spaces import Space, Spaces
from feedd.store import Remembered, RunQuery, Store

T = TypeVar("T")
POLL_SECONDS = 0.2
RECORD_RETRY_FIRST = 0.2  # seconds before trying again to record a run when the store failed
RECORD_RETRY_MOST = 10.0


def die_with_parent(parent: int) -> None:
    """In each worker: exit when the daemon does (kill -9 included), instead of working on as an orphan.
    Ctrl-C in a terminal signals the whole process group: only the daemon acts on it (a clean stop that
    shuts the pool down); a worker that took it would die with a KeyboardInterrupt traceback each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the daemon died before the line above ran
        os._exit(0)


def runs_dir(config: Config) -> Path:
    return config.state_dir / "runs"


class Runner:
    name = "runner"

    def __init__(self, config: Callable[[], Config], store: Store, spaces: Spaces, workers: int | None = None,
                 deliver: Callable[[], None] = lambda: None, notify: Callable[[], None] = lambda: None,
                 review_url: Callable[[str], str] | None = None, owner: str | None = None) -> None:
        self._config = config
        self._owner = owner  # the node this runner claims runs for (see feedd.cluster)
        self._review_url = review_url  # run id -> where a person reviews it (`reviewUrl` of run.needs_review)
        self._store = store
        self._spaces = spaces
        self._deliver = deliver  # deliveries were queued: wake the dispatcher
        self._notify = notify  # events were queued: wake the event sender
        # 0 workers: runs are recorded but never processed (intake-only setups and tests)
        self._workers = workers if workers is not None else os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._holders: dict[str, str] = {}  # run id -> connection, of the runs in `_inflight`
        self._lent_to: Counter[str] = Counter()  # connection -> workers lent to its runs (`_lent`)
        self._lent = 0  # workers processing a stretch of a run that already holds one
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._work = asyncio.Event()

    def wake(self) -> None:
        """New work was recorded: claim it now rather than at the next poll."""
        self._work.set()

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker process, as runs are processed: for work on an input outside a run
        (a review's sample or preview), which must never hold the event loop. With no workers (an
        intake-only setup), in a thread."""
        if self._pool is None:
            return await asyncio.to_thread(fn, *args)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BrokenProcessPool:
            self._pool = self._new_pool()
            raise

    def _new_pool(self) -> ProcessPoolExecutor:
        # One string hash seed for every worker, random per daemon: the stretches of one run, processed
        # in different workers, then hash `unique` strings alike and the merge can compare them.
        if not os.environ.get("PYTHONHASHSEED", "").isdigit():
            os.environ["PYTHONHASHSEED"] = str(secrets.randbelow(2**32 - 1) + 1)
        # spawn, not fork: the parent has threads (SQLite, intake) whose locks a fork could copy held.
        return ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))

    async def start(self) -> None:
        if self._workers == 0:
            return
        self._pool = self._new_pool()
        # Runs a dead node (or this daemon's earlier life) left `processing` were queued again by the cluster.
        # supervised: a store error while claiming restarts the loop instead of ending all processing
        self._task = supervisor.supervise(self.name, self._loop)

    async def reload(self, config: Config) -> None:
        """Runs read the live config each time; a pipeline made active again releases its held runs."""
        overrides = await self._store.pipeline_overrides()
        for pipe in config.pipelines.values():
            if overrides.get(pipe.name, pipe.active):
                await self.release_held(pipe.name)

    async def stop(self, deadline: float) -> None:
        self._stopping = True
        await supervisor.cancel(self._task)
        loop = asyncio.get_running_loop()
        if self._inflight:
            # let running work finish while there is time; what is left the cluster gives back as it leaves
            await asyncio.wait(list(self._inflight.values()), timeout=max(0.0, deadline - loop.time()))
        for task in self._inflight.values():
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        while not self._stopping:
            self._work.clear()  # before looking: a wake-up while claiming makes the wait below return at once
            free = self._workers - len(self._inflight) - self._lent
            if free > 0:
                failpoints.hit("runner.claim")
                holding = [*self._holders.values(), *self._lent_to.elements()]
                queued = fair_share(await self._store.queued_heads(free), holding, free)
                claims = [replace(run, status=RunStatus.PROCESSING, started_at=utcnow()) for run in queued]
                # claimed together: the store commits updates that arrive at once in one transaction
                won = await asyncio.gather(*(self._store.update_run(c, expect=RunStatus.QUEUED, owner=self._owner)
                                             for c in claims))
                for claimed, ok in zip(claims, won, strict=True):
                    if ok:
                        task = asyncio.get_running_loop().create_task(self._run(claimed))
                        self._inflight[claimed.run_id] = task
                        self._holders[claimed.run_id] = claimed.connection
                        task.add_done_callback(self._forget(claimed.run_id))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as the
            # event is set, and this loop would then never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._work.wait()

    def _forget(self, run_id: str) -> Callable[[asyncio.Task[None]], None]:
        reap = supervisor.reap("run.crashed", run_id=run_id)

        def done(task: asyncio.Task[None]) -> None:
            reap(task)  # `_run` records every failure it can; what escapes it (a stop mid-record) is logged
            self._inflight.pop(run_id, None)
            self._holders.pop(run_id, None)
            self._work.set()  # a worker is free

        return done

    async def _run(self, run: Run) -> None:
        try:
            await self._run_once(run)
        except Exception as exc:  # whatever went wrong, the run must not stay `processing`
            log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).exception("run.crashed")
            await self._record(_failed(run, f"processing failed: {exc}"), None)

    async def _run_once(self, run: Run) -> None:
        config = self._config()
        pipe = effective(config, run)
        if pipe is None or pipe.schema not in config.schemas:
            await self._finish(run, None, RunError("pipeline_removed", f"pipeline {run.pipeline!r} is no longer "
                                                                         "in the config"))
            return
        decided = _decision(run)
        try:
            pipe, reviewed = decision.apply(pipe, config.schemas[pipe.schema], decided)
        except decision.InvalidDecision as exc:
            await self._finish(run, None, RunError("review_mapping_invalid", f"the reviewer's mapping no longer "
                                                                             f"fits the pipeline: {exc}"))
            return
        assert self._pool is not None
        keys = input_keys(config, run)
        plain = runs_dir(config) / run.run_id / "input"  # the decrypted input, for this run only
        try:
            await self._with_input(run, pipe, config, decided, reviewed, keys, plain)
        finally:
            if keys is not None:
                await asyncio.to_thread(shutil.rmtree, plain, True)

    async def _with_input(self, run: Run, pipe: Pipeline, config: Config, decided: dict[str, Any] | None,
                          reviewed: tuple[str, ...], keys: pgp.Keys | None, plain: Path) -> None:
        logger = log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline)
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        source, failed = run.spool_path, None
        if keys is not None:
            # Decrypted in a worker, as a stream, into the run's own folder: the spool keeps the encrypted
            # original (its sha256 is the run's), and the plain copy is deleted when the run ends.
            source = str(plain / pgp.plain_name(run.source.name))
            try:
                await loop.run_in_executor(self._pool, pgp.decrypt, keys, run.spool_path, source)
            except pgp.PgpError as exc:
                failed = (exc.code, f"{run.source.name}: {exc.message}")
                logger.warning("run.decrypt_failed", error=exc.message)
            except BrokenProcessPool:
                await self._worker_died(run)
                return
        try:
            # The input's headers are read in a worker, like the rest of it: detecting a crafted file's
            # format or unpacking its archive must never hold the daemon's event loop.
            key = None if failed else await loop.run_in_executor(self._pool, headers_key, source, pipe.format)
            memory = await self._store.recall_mapping(run.connection, key) if key else None
        except Exception:  # the run itself meets the same problem and reports it
            memory = None
        previous = await self._previous_headers(run)
        job = Job(run.run_id, source, run.source.name, pipe, config.schemas[pipe.schema],
                  str(runs_dir(config) / run.run_id), memory, previous, receipt=receipt(run), reviewed=reviewed,
                  approved=decided is not None, failed=failed)
        assert self._pool is not None
        try:
            work = asyncio.ensure_future(self._process(job, run))
            if failpoints.ARMED == "runner.mid_processing":
                await asyncio.sleep(0.05)  # let the worker get going first
                failpoints.hit("runner.mid_processing")
            outcome = await work
        except BrokenProcessPool:
            await self._worker_died(run)
            return
        except Exception as exc:
            logger.exception("run.crashed")
            await self._finish(run, None, RunError("internal_error", f"processing failed: {exc}"))
            return
        await self._finish(run, outcome, None)

    async def _worker_died(self, run: Run) -> None:
        """A worker died under the run (killed, out of memory): the pool is made anew, the run fails."""
        self._pool = self._new_pool()
        log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).error("run.worker_died")
        await self._finish(run, None, RunError("worker_died", "the worker processing this run died; "
                                                              "retry the run to process it again"))

    async def _process(self, job: Job, run: Run) -> Outcome:
        """The run processed by one worker, or a large upload by as many idle workers as there are, each
        taking a stretch of its parts: a run alone on the machine then uses every core."""
        loop = asyncio.get_running_loop()
        idle = self._workers - len(self._inflight) - self._lent
        spans = stretches(run.meta.get("parts"), 1 + idle) if run.source.kind is SourceKind.UPLOAD else []
        if not spans:
            return await loop.run_in_executor(self._pool, process, job)
        self._lent += len(spans) - 1
        self._lent_to[run.connection] += len(spans) - 1
        try:
            pieces = await asyncio.gather(*(
                loop.run_in_executor(self._pool, process_stretch,
                                     replace(job, out_dir=f"{job.out_dir}/stretch-{i}", span=span))
                for i, span in enumerate(spans)))
            outcome = await loop.run_in_executor(self._pool, merge, job, pieces)
        finally:
            self._lent -= len(spans) - 1
            self._lent_to[run.connection] -= len(spans) - 1
            self._work.set()
        if outcome is None:  # one pass over the whole input decides instead
            return await loop.run_in_executor(self._pool, process, job)
        return outcome

    async def _previous_headers(self, run: Run) -> list[str] | None:
        done, _ = await self._store.list_runs(RunQuery(connection=run.connection, pipeline=run.pipeline,
                                                       statuses=(RunStatus.COMPLETED, RunStatus.DELIVERED), limit=1))
        headers = done[0].meta.get("headers") if done else None
        return list(headers) if isinstance(headers, list) else None

    async def _finish(self, run: Run, outcome: Outcome | None, error: RunError | None) -> None:
        """Record how the run ended. Whatever goes wrong on the way (a full disk while placing reports, a
        name the filesystem refuses, the store itself), the run ends recorded: `failed` with
        `internal_error` when its outcome could not be."""
        try:
            await self._conclude(run, outcome, error)
        except Exception as exc:
            log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).exception("run.finish_failed")
            await self._record(_failed(run, f"finishing the run failed: {exc}"), outcome)

    async def _conclude(self, run: Run, outcome: Outcome | None, error: RunError | None) -> None:
        config = self._config()
        logger = log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline)
        if outcome is not None and outcome.error is not None:
            error = RunError(*outcome.error)
        status = RunStatus.FAILED if error is not None or outcome is None or outcome.status != "completed" \
            else RunStatus.COMPLETED
        if error is None and outcome is not None and outcome.status == "needs_review":
            status = RunStatus.NEEDS_REVIEW
        meta = dict(run.meta)
        if outcome is not None:
            meta.update(detected=outcome.detected, headers=outcome.headers, header_key=outcome.header_key,
                        drift=outcome.drift, records=outcome.records_path, rejects=outcome.rejects_path,
                        records_jsonl=outcome.records_jsonl_path,
                        report=outcome.report_path, mapping_reasons=outcome.reasons, seconds=outcome.seconds,
                        stretches=outcome.stretches, warned=outcome.warned,
                        warnings=[list(w) for w in outcome.warnings])
            if outcome.review is not None:
                meta["review"] = outcome.review
            elif _decision(run) is None:
                meta.pop("review", None)  # an earlier wait that no approval answered no longer applies
        done = replace(
            run, status=status, finished_at=utcnow(), error=error, meta=meta,
            counts=Counts(outcome.rows, outcome.valid, outcome.invalid) if outcome else run.counts,
            mapping=outcome.mapping if outcome else run.mapping,
            errors=tuple(RowError(*e) for e in outcome.errors) if outcome else run.errors,
        )
        pipe = effective(config, run)
        deliveries: list[Delivery] = []
        remember: Remembered | None = None
        if outcome is not None and pipe is not None:
            space = self._spaces.get(run.connection)
            # A run waiting for review tells the partner nothing yet: its report comes with the decision.
            if pipe.reports and run.direction is Direction.INBOUND and space is not None \
                    and status is not RunStatus.NEEDS_REVIEW:
                # The copies are made in a thread; the space's byte count is kept on the loop, its one owner.
                space.used += await asyncio.to_thread(self._partner_reports, space, run, outcome,
                                                      pgp.sealing(config, run.connection))
            if status is RunStatus.COMPLETED:
                decided = _decision(run)
                if outcome.header_key and (decided is None or decided.get("remember")):
                    # a reviewer's mapping for this run alone is not what the next file gets
                    remember = Remembered(run.connection, outcome.header_key,
                                          {t: c for t, c in outcome.mapping.items() if c in outcome.headers})
                # The name the output gets everywhere is fixed now: a redelivery days later uses the same.
                meta["output_name"] = run.meta.get("filename") or output_name(pipe, Job(
                    run.run_id, run.spool_path, run.source.name, pipe, config.schemas[pipe.schema], ""))
                now = utcnow()
                deliveries = [Delivery(run.run_id, d.key, next_attempt_at=now) for d in pipe.destinations]
                done = replace(done, meta=meta, deliveries=tuple(deliveries))
        failpoints.hit("runner.before_record")
        data = done.to_json()
        if done.status is RunStatus.NEEDS_REVIEW and self._review_url is not None:
            data["reviewUrl"] = self._review_url(run.run_id)
        queued = events.make(config, f"run.{done.status}", data)
        if outcome is not None and outcome.drift:
            queued += events.make(config, "schema.drift", {
                "runId": run.run_id, "connection": run.connection, "pipeline": run.pipeline, **outcome.drift})
        if not await self._store.update_run(done, expect=RunStatus.PROCESSING, events=queued, deliveries=deliveries,
                                            remember=remember, owner=self._owner):
            self._lost(run)
            return
        if deliveries:
            self._deliver()
        if queued:
            self._notify()
        if outcome is not None:
            metrics.ROWS.labels("valid").inc(outcome.valid)
            metrics.ROWS.labels("invalid").inc(outcome.invalid)
            metrics.PROCESSING_SECONDS.observe(outcome.seconds)
        logger.info("run.finished", status=str(done.status), rows=done.counts.rows, valid=done.counts.valid,
                    invalid=done.counts.invalid, error=done.error.code if done.error else None,
                    seconds=outcome.seconds if outcome else None, drift=outcome.drift if outcome else None)

    async def _record(self, failed: Run, outcome: Outcome | None) -> None:
        """Store a run that failed while finishing, trying again while the store itself fails (a full disk
        clears, a lock is released) until it takes it or the daemon stops: a stop leaves the run
        `processing`, and the next start queues it again."""
        logger = log.get(run_id=failed.run_id, connection=failed.connection, pipeline=failed.pipeline)
        pause = RECORD_RETRY_FIRST
        while True:
            try:
                queued = events.make(self._config(), f"run.{failed.status}", failed.to_json())
                if not await self._store.update_run(failed, expect=RunStatus.PROCESSING, events=queued,
                                                    deliveries=[], owner=self._owner):
                    self._lost(failed)
                    return
                break
            except Exception:
                if self._stopping:
                    raise
                logger.exception("run.record_failed", retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECORD_RETRY_MOST)
        self._notify()
        logger.info("run.finished", status=str(failed.status), error=failed.error.code if failed.error else None,
                    message=failed.error.message if failed.error else None,
                    seconds=outcome.seconds if outcome else None)

    def _lost(self, run: Run) -> None:
        """The run is no longer this node's to finish: it was taken for dead, and the run went back to the
        queue (another node may have it now). Its outcome here is dropped; the run is processed again."""
        log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).warning(
            "run.lost", node=self._owner, reason="taken over by another node; its outcome here is dropped")

    @staticmethod
    def _partner_reports(space: Space, run: Run, outcome: Outcome, seal: pgp.Keys | None) -> int:
        """Place the report (and the rejects) in the partner's outbox, encrypted to the partner's keys when
        it has `encrypt_to`; the bytes they add."""
        if outcome.report_path is None:
            return 0
        name = run.source.name.rsplit("/", 1)[-1]
        added = place_outbox(Path(outcome.report_path), space.outbox, fit_name(f"{name}.report.json"),
                             seal).stat().st_size
        if outcome.invalid and outcome.rejects_csv_path:
            added += place_outbox(Path(outcome.rejects_csv_path), space.outbox, fit_name(f"{name}.rejects.csv"),
                                  seal).stat().st_size
        return added

    async def retry(self, run: Run, *, reprocess: bool) -> Run:
        """Re-deliver a completed run's failed destinations, or queue the run's input to be processed again
        (`reprocess`, or a failed run). Raises ValueError when the run's state allows neither."""
        if run.status in (RunStatus.QUEUED, RunStatus.PROCESSING, RunStatus.HELD):
            raise ValueError(f"run {run.run_id} is {run.status}: nothing to retry yet")
        if run.status is RunStatus.NEEDS_REVIEW and not reprocess:
            raise ValueError(f"run {run.run_id} needs review: approve or reject it (POST /runs/{run.run_id}/review), "
                             "or process it again as it is with {\"reprocess\": true}")
        if reprocess or run.status is RunStatus.FAILED:
            if run.swept("input"):
                raise ValueError(f"run {run.run_id}: its input was deleted by retention")
            if run.pipeline is None:
                raise ValueError(f"run {run.run_id} matches no pipeline: add one, then drop the file again")
            if not await asyncio.to_thread(Path(run.spool_path).is_file):
                raise ValueError(f"run {run.run_id}: its input is no longer in the spool")
            # its input is there (checked above): outputs swept by retention are made again
            again = replace(run, status=RunStatus.QUEUED, error=None, counts=Counts(), errors=(), mapping={},
                            started_at=None, finished_at=None, acknowledged_at=None, duplicate_of=None,
                            meta={k: v for k, v in run.meta.items() if k != "swept"})
            if not await self._store.update_run(again, expect=run.status):
                raise ValueError(f"run {run.run_id} changed meanwhile; look again")
            log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).info("run.reprocess")
            return again
        failed = [d for d in run.deliveries if d.status is DeliveryStatus.FAILED]
        if failed and run.swept("outputs"):
            raise ValueError(f"run {run.run_id}: its outputs were deleted by retention, so nothing can be "
                             "delivered again")
        if not failed:
            raise ValueError(f"run {run.run_id} is {run.status} with nothing that failed to deliver; "
                             "use {\"reprocess\": true} to run it again")
        pending = {d.destination: replace(d, status=DeliveryStatus.PENDING, next_attempt_at=utcnow()) for d in failed}
        pipe = effective(self._config(), run)
        for dest in pipe.destinations if pipe else ():
            if dest.key in pending and dest.url:
                await self._store.enable_target(dest.url)  # an operator's retry is the word to try again
        retried = replace(run, deliveries=tuple(pending.get(d.destination, d) for d in run.deliveries))
        if not await self._store.update_run(retried, expect=run.status, deliveries=list(pending.values())):
            raise ValueError(f"run {run.run_id} changed meanwhile; look again")
        log.get(run_id=run.run_id, connection=run.connection, pipeline=run.pipeline).info(
            "run.redeliver", destinations=sorted(pending))
        self._deliver()
        return retried

    async def release_held(self, pipeline: str) -> int:
        """Queue the pipeline's held runs again in arrival order (the claim loop takes oldest first)."""
        released = 0
        while True:
            held, _ = await self._store.list_runs(RunQuery(pipeline=pipeline, statuses=(RunStatus.HELD,),
                                                           oldest_first=True, limit=500))
            if not held:
                return released
            for run in held:
                if await self._store.update_run(replace(run, status=RunStatus.QUEUED), expect=RunStatus.HELD):
                    released += 1
            if released:
                log.get(pipeline=pipeline).info("runs.released", count=released)


def fair_share(queued: list[Run], holding: Iterable[str], free: int) -> list[Run]:
    """Up to `free` of `queued` (the oldest queued runs of each connection, oldest first) to start now,
    each going to the connection that holds the fewest workers (`holding`: the connection of each run
    in progress), the oldest run first among equals. One connection's backlog (a burst of large files, a
    decompression bomb that runs to its limits) then never keeps another connection's run waiting for
    every worker: it starts at the next free one."""
    held = Counter(holding)
    heads: dict[str, deque[Run]] = {}
    for run in queued:
        heads.setdefault(run.connection, deque()).append(run)
    chosen: list[Run] = []
    while heads and len(chosen) < free:
        connection = min(heads, key=lambda c: (held[c], heads[c][0].run_id))
        chosen.append(heads[connection].popleft())
        held[connection] += 1
        if not heads[connection]:
            del heads[connection]
    return chosen


MIN_STRETCH = 10_000  # records: below this, joining the outputs costs more than a second worker gains


def stretches(parts: object, most: int) -> list[Span]:
    """An upload's parts (`[start, end, records]` each, in file order) grouped into up to `most` stretches
    of about equal records, at least MIN_STRETCH each; [] when one worker should take the whole run."""
    if not isinstance(parts, list) or not all(isinstance(p, list) and len(p) == 3 for p in parts):
        return []
    total = sum(int(p[2]) for p in parts)
    count = min(most, total // MIN_STRETCH)
    if count < 2:
        return []
    spans: list[Span] = []
    start, before, taken = int(parts[0][0]), 0, 0
    for i, (_, end, records) in enumerate(parts):
        taken += int(records)
        if i == len(parts) - 1 or (len(spans) < count - 1 and taken * count >= total * (len(spans) + 1)):
            spans.append(Span(start, int(end), before, taken - before))
            if i + 1 < len(parts):
                start, before = int(parts[i + 1][0]), taken
    return spans if len(spans) > 1 else []


def _decision(run: Run) -> dict[str, Any] | None:
    """The reviewer's approval the run carries (`meta.review.decision`), or None."""
    review = run.meta.get("review")
    found = review.get("decision") if isinstance(review, dict) else None
    return found if isinstance(found, dict) and found.get("decision") == "approve" else None


def _failed(run: Run, message: str) -> Run:
    return replace(run, status=RunStatus.FAILED, finished_at=utcnow(), deliveries=(),
                   error=RunError("internal_error", message))


def effective(config: Config, run: Run) -> Pipeline | None:
    """The run's pipeline as this run needs it: an upload's input is always the JSON array its parts made
    (whatever its file name says), and its output has the format the upload asked for."""
    pipe = config.pipelines.get(run.pipeline or "")
    if pipe is None or run.source.kind is not SourceKind.UPLOAD:
        return pipe
    pipe = replace(pipe, format=replace(pipe.format, type="json"))
    output = run.meta.get("output")
    if output in ("csv", "json", "jsonl"):
        pipe = replace(pipe, output=replace(pipe.output, format=output))
    return pipe


def input_keys(config: Config, run: Run) -> pgp.Keys | None:
    """The keys that decrypt the run's input before it is read, or None: a file the partner sent (SFTP, a
    copy, tus) named `*.pgp`/`*.gpg`/`*.asc` on a connection with `decrypt_key`. An upload's input is the
    JSON array its parts made, whatever its file name says."""
    if run.source.kind is SourceKind.UPLOAD:
        return None
    return pgp.decryption(config, run.connection, run.source.name)
