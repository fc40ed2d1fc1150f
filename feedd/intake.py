"""`accept()`: the single entry point for every input. Spool, hash, record a run, then return.

Whatever the way in (an SFTP drop, a file copied into a space, a finished multipart or tus upload),
the input is moved into the spool, made durable, hashed and recorded as a run in one store
transaction before anyone downstream can see it. After `accept` returns, a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedd import events, failpoints, log
from feedd.config import Config
from feedd.durable import fsync_dir, hash_and_sync, move_into, sync_file
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


def spool_dir(config: Config) -> Path:
    return config.state_dir / "spool"


def spool_name(name: str) -> str:
    """A file name safe in the spool, keeping the original's stem and extension readable."""
    base = name.rsplit("/", 1)[-1]
    safe = _UNSAFE.sub("_", base).lstrip(".") or "input"
    return safe[:200]


def _move_and_hash(item: Input, dest: Path, known_sha: str | None) -> tuple[str, int]:
    renamed = move_into(item.path, dest)
    if known_sha is not None and renamed:
        size = sync_file(dest)
        sha = known_sha
    else:
        sha, size = hash_and_sync(dest)
    # The spool's entry must be durable before the run is recorded. The inbox's folder is not synced:
    # if a crash brought the old name back, the file would be offered again and recorded as a duplicate
    # of this run (same connection, same sha256), never processed twice.
    fsync_dir(dest.parent)
    return sha, size


def _put_back(spooled: Path, original: Path) -> None:
    try:
        if not original.exists():
            os.rename(spooled, original)
    except OSError as exc:
        log.get().error("intake.put_back_failed", spooled=str(spooled), original=str(original), error=str(exc))


async def accept(store: Store, config: Config, item: Input, *, pipeline: str | None = None,
                 overrides: dict[str, bool] | None = None) -> Run:
    """Take `item` into the spool and record its run (`queued`, `held`, or `failed`). Durable on return.

    `pipeline` is the one chosen by the caller (matching is the caller's business: an SFTP drop is
    matched by its path, an upload names its pipeline). None gives a `failed` run with
    `no_matching_pipeline`; the input stays in the spool so that it can be retried.
    """
    run_id = new_id()
    # Who it is for travels in the name: if the daemon dies between this move and the commit, `recover()`
    # finds the file without a run and takes it in again.
    dest = spool_dir(config) / f"{run_id}.{item.connection}.{item.kind}.{pipeline or '-'}.{spool_name(item.name)}"
    sha, size = await asyncio.to_thread(_move_and_hash, item, dest, item.sha256)
    failpoints.hit("intake.after_spool")
    try:
        run = await _record(store, config, item, pipeline, overrides, run_id, dest, sha, size)
    except BaseException:
        # Not recorded, so not accepted: put the input back where it came from for a later try.
        await asyncio.to_thread(_put_back, dest, item.path)
        raise
    failpoints.hit("intake.after_commit")
    log.get(connection=item.connection, pipeline=run.pipeline, run_id=run_id).info(
        "run.accepted", status=str(run.status), source=item.name, size=size, sha256=sha, kind=str(item.kind),
        error=run.error.code if run.error else None)
    return run


async def _record(store: Store, config: Config, item: Input, pipeline: str | None,
                  overrides: dict[str, bool] | None, run_id: str, dest: Path, sha: str, size: int) -> Run:
    """Decide the run's first status (queued, held, duplicate, unmatched) and record it in one transaction."""
    pipe = config.pipelines.get(pipeline) if pipeline else None
    direction = pipe.direction if pipe else Direction.INBOUND
    status, error, duplicate_of = RunStatus.QUEUED, None, None
    if pipe is None:
        status = RunStatus.FAILED
        error = RunError("no_matching_pipeline",
                         f"{item.name}: no {direction} pipeline of connection {item.connection!r} matches this name")
    else:
        active = (overrides if overrides is not None else await store.pipeline_overrides()).get(pipe.name, pipe.active)
        # An outbound upload is an app's explicit request (with an id of its own): the same records sent
        # again are meant to be sent again. A re-dropped file is usually a partner's retry.
        check = pipe.skip_duplicates and item.kind is not SourceKind.UPLOAD
        if check and (original := await store.find_run_by_content(item.connection, sha)) is not None:
            status, duplicate_of = RunStatus.FAILED, original.run_id
            error = RunError("duplicate_input", f"{item.name}: same content (sha256 {sha[:12]}...) as run "
                                                f"{original.run_id}; not processed again")
        elif not active:
            status = RunStatus.HELD
    run = Run(
        run_id=run_id,
        pipeline=pipe.name if pipe else None,
        connection=item.connection,
        direction=direction,
        status=status,
        source=Source(item.kind, item.name, size, sha),
        spool_path=str(dest),
        error=error,
        duplicate_of=duplicate_of,
        meta=dict(item.meta),
    )
    # run.queued / run.held / run.failed, queued in the same transaction as the run itself
    await store.insert_run(run, events.make(config, f"run.{status}", run.to_json()))
    return run


RECOVER_WINDOW = 1000  # recorded spool files in a row, newest first, after which the search stops


async def recover(store: Store, config: Config) -> int:
    """Take in again every spool file that has no run: an input moved into the spool by a daemon that
    died before recording it. Returns how many.

    Run ids sort by time, and every start recovers what the last crash left, so orphans can only be
    among the newest files (as many as were being taken in at once): the search goes newest first and
    stops after RECOVER_WINDOW recorded ones in a row, so a spool of millions costs one listing."""
    folder = spool_dir(config)
    names = await asyncio.to_thread(
        lambda: sorted((p.name for p in folder.iterdir()), reverse=True) if folder.is_dir() else [])
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
