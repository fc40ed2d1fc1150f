"""`accept()`: the single entry point for every input. Spool, hash, record a run, then return.

Whatever the way in (an SFTP drop, a file copied into a space, a finished multipart or tus upload),
the input is moved into the spool, made durable, hashed and recorded as a run in one store
transaction before anyone downstream can see it. After `accept` returns, a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedd import events, failpoints, log
from feedd.config import Config
from feedd.durable import (
    can_sync_filesystem,
    fit_name,
    fsync_dir,
    hash_and_sync,
    move_into,
    sync_file,
    sync_filesystem,
)
from feedd.errors import ConflictError, DuplicateContentError
from feedd.model import Direction, Run, RunError, RunStatus, Source, SourceKind, new_id
from feedd.store import Store

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Input:
    """One input ready to be taken. `path` is moved (not copied) into the spool when possible."""

    connection: str
    kind: SourceKind
    name: str  # as the partner or app named it, e.g. inbox/2026/staff.csv
    path: Path
    pipeline: str | None  # None: choose by matching `name` against inbound pipelines
    sha256: str | None = None  # already computed while the bytes streamed in (trusted only from feedd itself)
    meta: dict[str, Any] = field(default_factory=dict)  # kept on the run (e.g. an upload's filename, output)
    # The run's id, when the caller chose it: taking the input again then records nothing (ConflictError), so
    # that two nodes completing one upload at once make one run.
    run_id: str | None = None


def spool_dir(config: Config) -> Path:
    return config.state_dir / "spool"


def spool_name(name: str) -> str:
    """A file name safe in the spool, keeping the original's stem and extension readable."""
    base = name.rsplit("/", 1)[-1]
    safe = _UNSAFE.sub("_", base).lstrip(".") or "input"
    return safe[:200]


def _move_and_hash(item: Input, dest: Path, *, sync: bool) -> tuple[str, int]:
    renamed = move_into(item.path, dest)
    if item.sha256 is not None and renamed:
        return item.sha256, sync_file(dest) if sync else os.lstat(dest).st_size
    return hash_and_sync(dest, sync=sync)


def _spool_all(jobs: list[tuple[Input, Path]]) -> list[tuple[str, int] | Exception]:
    """Move, hash and make durable each input (one thread hand-off for the batch): its data, and its
    spool entry, must be on disk before its run is recorded.

    One input is fsynced, then its folder. Several are made durable together by one `syncfs` of the
    spool's filesystem: on ext4 every fsync of a new file is a journal commit of its own, and a stream
    of small uploads pays more for those commits than for anything else in intake (and the SFTP loop
    waits on the journal meanwhile). The inbox's folder is not synced: if a crash brought an old name
    back, the file would be offered again and recorded as a duplicate of its run (same connection, same
    sha256), never processed twice."""
    whole = len(jobs) > 1 and can_sync_filesystem()
    out: list[tuple[str, int] | Exception] = []
    for item, dest in jobs:
        try:
            out.append(_move_and_hash(item, dest, sync=not whole))
        except Exception as exc:  # this input stays where it was; the others go on
            out.append(exc)
    for folder in {dest.parent for (_, dest), res in zip(jobs, out, strict=True) if not isinstance(res, Exception)}:
        if whole and _synced_together(folder):
            continue
        for i, ((_, dest), res) in enumerate(zip(jobs, out, strict=True)):
            if whole and dest.parent == folder and not isinstance(res, Exception):
                try:
                    sync_file(dest)
                except OSError as exc:
                    out[i] = exc
        try:
            fsync_dir(folder)
        except OSError as exc:
            out = [exc if dest.parent == folder else res for (_, dest), res in zip(jobs, out, strict=True)]
    return out


def _synced_together(folder: Path) -> bool:
    """One syncfs for the batch; False when the batch must be synced file by file instead."""
    try:
        return sync_filesystem(folder)  # False: not allowed here after all
    except OSError as exc:
        # The error may be another file's on the same filesystem: each file's own fsync tells. That is a
        # first fsync of each, not a retry: a write-back error stays recorded on the file until an fsync
        # of it reports it, which syncfs (reporting the filesystem's) does not do.
        log.get().warning("intake.syncfs_failed", folder=str(folder), error=str(exc),
                          action="syncing the batch file by file")
        return False


@dataclass(eq=False, slots=True)
class _Request:
    config: Config
    item: Input
    pipeline: str | None
    overrides: dict[str, bool] | None
    done: asyncio.Future[Run]
    run_id: str = ""
    dest: Path = Path()


def _put_back(requests: list[_Request]) -> None:
    """Not recorded, so not accepted: each input goes back where it came from, for a later try."""
    for r in requests:
        try:
            if not r.item.path.exists():
                os.rename(r.dest, r.item.path)
        except OSError as exc:
            log.get().error("intake.put_back_failed", spooled=str(r.dest), original=str(r.item.path),
                            error=str(exc))


class _Gatherer:
    """Inputs that arrive together are taken in together: one thread hand-off moves and syncs them all,
    one filesystem sync makes them durable, one transaction records their runs. Each keeps its own
    outcome: one input's failure fails no other."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[_Request] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, request: _Request) -> Run:
        self._pending.append(request)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return await request.done

    async def _work(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            try:
                await self._take(batch)
            except Exception as exc:
                for r in batch:
                    if not r.done.done():
                        r.done.set_exception(exc)
            except BaseException:
                for r in batch + self._pending:
                    r.done.cancel()
                raise

    async def _take(self, batch: list[_Request]) -> None:
        for r in batch:
            r.run_id = r.item.run_id or new_id()
            # Who it is for travels in the name: if the daemon dies between this move and the commit,
            # `recover()` finds the file without a run and takes it in again.
            r.dest = spool_dir(r.config) / fit_name(f"{r.run_id}.{r.item.connection}.{r.item.kind}."
                                                    f"{r.pipeline or '-'}.{spool_name(r.item.name)}")
        spooled = await asyncio.to_thread(_spool_all, [(r.item, r.dest) for r in batch])
        failpoints.hit("intake.after_spool")
        taken = [(r, res) for r, res in zip(batch, spooled, strict=True) if not isinstance(res, Exception)]
        for r, res in zip(batch, spooled, strict=True):
            if isinstance(res, Exception):
                r.done.set_exception(res)
        runs: list[tuple[_Request, Run]] = []
        try:
            # What every run of the batch needs from the store, asked once for the batch.
            overrides = await self._store.pipeline_overrides() if any(r.overrides is None for r in batch) else {}
            originals = await self._store.originals({(r.item.connection, sha) for r, (sha, _) in taken
                                                     if _checks_duplicates(r)})
        except Exception as exc:
            await asyncio.to_thread(_put_back, [r for r, _ in taken])
            for r, _ in taken:
                r.done.set_exception(exc)
            return
        first: dict[tuple[str, str], str] = {}  # (connection, sha256) -> run id, the first of this batch
        for r, (sha, size) in taken:
            run = _decide(r, sha, size, r.overrides if r.overrides is not None else overrides,
                          originals.get((r.item.connection, sha)) or first.get((r.item.connection, sha)))
            runs.append((r, run))
            first.setdefault((run.connection, sha), run.run_id)
        # Recorded together: the store commits inserts that arrive at once in one transaction.
        outcomes = await asyncio.gather(*(self._record(r, run, overrides) for r, run in runs),
                                        return_exceptions=True)
        runs = [(r, outcome if isinstance(outcome, Run) else run)
                for (r, run), outcome in zip(runs, outcomes, strict=True)]
        unrecorded = [(r, error) for (r, _), error in zip(runs, outcomes, strict=True)
                      if isinstance(error, BaseException)]
        if unrecorded:
            # An input whose run another node recorded under the id its caller chose is that run's, spooled.
            await asyncio.to_thread(_put_back, [r for r, error in unrecorded
                                                if not (r.item.run_id and isinstance(error, ConflictError))])
            for r, error in unrecorded:
                r.done.set_exception(error)
        failpoints.hit("intake.after_commit")
        for (r, run), outcome in zip(runs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                continue
            item = r.item
            log.get(connection=item.connection, pipeline=run.pipeline, run_id=run.run_id).info(
                "run.accepted", status=str(run.status), source=item.name, size=run.source.size,
                sha256=run.source.sha256, kind=str(item.kind), error=run.error.code if run.error else None)
            r.done.set_result(run)

    async def _record(self, r: _Request, run: Run, overrides: dict[str, bool]) -> Run:
        """Insert the run; one that must be the first of its content and is not (another node recorded the same
        content since the look-up) is recorded as a duplicate of the one that is."""
        first = run.duplicate_of is None and run.source.size > 0 and _checks_duplicates(r)
        try:
            await self._store.insert_run(run, events.make(r.config, f"run.{run.status}", run.to_json),
                                         first_of_content=first)
            return run
        except DuplicateContentError as exc:
            run = _decide(r, run.source.sha256, run.source.size, r.overrides if r.overrides is not None else overrides,
                          exc.original)
            await self._store.insert_run(run, events.make(r.config, f"run.{run.status}", run.to_json))
            return run


BATCH = 256  # inputs per hand-off and transaction at most
_gatherers: weakref.WeakKeyDictionary[Store, _Gatherer] = weakref.WeakKeyDictionary()


async def accept(store: Store, config: Config, item: Input, *, pipeline: str | None = None,
                 overrides: dict[str, bool] | None = None) -> Run:
    """Take `item` into the spool and record its run (`queued`, `held`, or `failed`). Durable on return.

    `pipeline` is the one chosen by the caller (matching is the caller's business: an SFTP drop is
    matched by its path, an upload names its pipeline). None gives a `failed` run with
    `no_matching_pipeline`; the input stays in the spool so that it can be retried.
    """
    gatherer = _gatherers.get(store)
    if gatherer is None:
        gatherer = _gatherers[store] = _Gatherer(store)
    done: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
    return await gatherer.submit(_Request(config, item, pipeline, overrides, done))


def _checks_duplicates(r: _Request) -> bool:
    # An outbound upload is an app's explicit request (with an id of its own): the same records sent
    # again are meant to be sent again. A re-dropped file is usually a partner's retry.
    pipe = r.config.pipelines.get(r.pipeline) if r.pipeline else None
    return pipe is not None and pipe.skip_duplicates and r.item.kind is not SourceKind.UPLOAD


def _decide(r: _Request, sha: str, size: int, overrides: dict[str, bool], original: str | None) -> Run:
    """The run's first status: queued, held, duplicate (of `original`, an earlier run with the same
    content) or unmatched."""
    item, config = r.item, r.config
    pipe = config.pipelines.get(r.pipeline) if r.pipeline else None
    direction = pipe.direction if pipe else Direction.INBOUND
    status, error, duplicate_of = RunStatus.QUEUED, None, None
    if pipe is None:
        status = RunStatus.FAILED
        error = RunError("no_matching_pipeline",
                         f"{item.name}: no {direction} pipeline of connection {item.connection!r} matches this name")
    elif original is not None and size > 0 and _checks_duplicates(r):
        # (every empty file has the same sha256: "nothing today" again is not a repeat of yesterday's)
        status, duplicate_of = RunStatus.FAILED, original
        error = RunError("duplicate_input", f"{item.name}: same content (sha256 {sha[:12]}...) as run "
                                            f"{original}; not processed again")
    elif not overrides.get(pipe.name, pipe.active):
        status = RunStatus.HELD
    return Run(
        run_id=r.run_id,
        pipeline=pipe.name if pipe else None,
        connection=item.connection,
        direction=direction,
        status=status,
        source=Source(item.kind, item.name, size, sha),
        spool_path=str(r.dest),
        error=error,
        duplicate_of=duplicate_of,
        meta=dict(item.meta),
    )


RECOVER_WINDOW = 1000  # recorded spool files in a row, newest first, after which the search stops


async def recover(store: Store, config: Config, *, before: str | None = None) -> int:
    """Take in again every spool file that has no run: an input moved into the spool by a daemon that
    died before recording it. Returns how many. With `before` (a run id), only files spooled under an
    older id: on a spool that other nodes share, a newer file may be one a live node is recording now.

    Run ids sort by time, and every start recovers what the last crash left, so orphans can only be
    among the newest files (as many as were being taken in at once): the search goes newest first and
    stops after RECOVER_WINDOW recorded ones in a row, so a spool of millions costs one listing."""
    folder = spool_dir(config)
    names = await asyncio.to_thread(
        lambda: sorted((p.name for p in folder.iterdir() if before is None or p.name < before), reverse=True)
        if folder.is_dir() else [])
    taken = recorded = 0
    for name in names:
        if recorded >= RECOVER_WINDOW:
            break
        parts = name.split(".", 4)
        if len(parts) < 5 or await store.get_run(parts[0]) is not None:
            recorded += 1
            continue
        recorded = 0
        _, connection, kind, pipeline, base = parts
        if connection not in config.connections or kind not in SourceKind.__members__.values():
            log.get().warning("intake.orphan_left", file=name, reason="unknown connection or kind")
            continue
        chosen = pipeline if pipeline in config.pipelines else None
        item = Input(connection, SourceKind(kind), base, folder / name, chosen, meta={"recovered": True})
        run = await accept(store, config, item, pipeline=chosen)
        log.get(connection=connection, run_id=run.run_id).warning("intake.recovered", file=name)
        taken += 1
    return taken
