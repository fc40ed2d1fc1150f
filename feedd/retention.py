"""Retention (README, "Retention"): one sweep deletes spooled inputs and run outputs past their age (or past
`after_ack` after their run's acknowledgement) and partner outbox files past theirs.

Nothing of a run that has not reached its end is touched: the store hands out only runs that are `failed`,
`delivered`, or `completed` with no delivery pending, and a run is marked swept (conditionally on that
state) before its files go, so a run that a retry takes back meanwhile keeps them and one that is marked
says so even if the deletion is cut short (the next sweep finishes it). Outbox ages are per connection: the
longest its pipelines ask for (a pipeline that keeps forever keeps the whole outbox). The current data specs
(`<pipeline>.spec.*`) are never swept: feedd keeps them up to date instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from feedd import log, metrics, pgp
from feedd.config import Config
from feedd.config.values import Retention
from feedd.spaces import Spaces, walk
from feedd.spec import spec_names, wanted
from feedd.store import Store, SweepQuery, SweptPart

PAGES = 1000  # pages of candidates per group and part in one sweep, at most (the next sweep goes on)


@dataclass(slots=True)
class Swept:
    """What one sweep removed: counts and bytes by part (`inputs`, `outputs`, `outbox`)."""

    files: dict[str, int] = field(default_factory=lambda: {"inputs": 0, "outputs": 0, "outbox": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"inputs": 0, "outputs": 0, "outbox": 0})

    def add(self, part: str, files: int, size: int) -> None:
        self.files[part] += files
        self.bytes[part] += size


def _ago(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else now - timedelta(seconds=seconds)


def _groups(config: Config) -> list[tuple[str | None, Retention]]:
    """(pipeline, its retention) for each pipeline, then (None, the top level) for every other run."""
    return [*((p.name, p.retention) for p in config.pipelines.values()), (None, config.retention)]


async def sweep(config: Config, store: Store, spaces: Spaces, now: datetime) -> Swept:
    """One sweep; logs one line with what it removed. Nothing at all when no age is set anywhere."""
    done = Swept()
    if all(r == Retention() for _, r in _groups(config)):
        return done
    others = frozenset(config.pipelines)
    for part, name in ((SweptPart.INPUT, "inputs"), (SweptPart.OUTPUTS, "outputs")):
        for pipeline, retention in _groups(config):
            age = retention.inputs if part is SweptPart.INPUT else retention.outputs
            query = SweepQuery(
                part,
                _ago(now, age),
                _ago(now, retention.after_ack),
                pipeline,
                others if pipeline is None else frozenset(),
            )
            for _ in range(PAGES):
                runs = await store.sweep_candidates(query)
                for run in runs:
                    if not await store.mark_swept(run.run_id, part):
                        continue  # taken back meanwhile (a retry): it keeps its files
                    files, size = await asyncio.to_thread(
                        _remove_input if part is SweptPart.INPUT else _remove_outputs,
                        Path(run.spool_path) if part is SweptPart.INPUT else config.state_dir / "runs" / run.run_id,
                    )
                    done.add(name, files, size)
                if len(runs) < query.limit:
                    break
    keep = {c: {n for p in pipes for s in spec_names(p.name) for n in (s, pgp.sealed_name(s))}
            for c, pipes in wanted(config).items()}
    for space in spaces:
        age = outbox_age(config, space.name)
        if age is None:
            continue
        files, size = await asyncio.to_thread(
            _sweep_outbox, space.outbox, (now - timedelta(seconds=age)).timestamp(), keep.get(space.name, set())
        )
        space.used = max(0, space.used - size)  # the loop owns the count; the thread only deleted
        done.add("outbox", files, size)
    for what, size in done.bytes.items():
        if size:
            metrics.RETENTION_RECLAIMED.labels(what).inc(size)
    log.get().info(
        "retention.swept",
        inputs=done.files["inputs"],
        inputs_bytes=done.bytes["inputs"],
        outputs=done.files["outputs"],
        outputs_bytes=done.bytes["outputs"],
        outbox=done.files["outbox"],
        outbox_bytes=done.bytes["outbox"],
    )
    return done


def outbox_age(config: Config, connection: str) -> float | None:
    """The age past which the connection's outbox files go: the longest its pipelines keep them (None,
    forever, if one keeps them forever), or the top level's for a connection without pipelines."""
    ages = [p.retention.outbox for p in config.pipelines.values() if p.connection == connection]
    if not ages:
        return config.retention.outbox
    if any(a is None for a in ages):
        return None
    return max(a for a in ages if a is not None)


def _remove_input(path: Path) -> tuple[int, int]:
    try:
        size = os.lstat(path).st_size
        path.unlink()
    except FileNotFoundError:
        return 0, 0
    return 1, size


def _remove_outputs(folder: Path) -> tuple[int, int]:
    files = size = 0
    for here, entries in walk(folder):
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                files += 1
                size += entry.stat(follow_symlinks=False).st_size
        del here
    shutil.rmtree(folder, ignore_errors=True)
    return files, size


def _sweep_outbox(outbox: Path, cutoff: float, keep: set[str]) -> tuple[int, int]:
    files = size = 0
    for here, entries in walk(outbox):
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime >= cutoff or (here == os.fspath(outbox) and entry.name in keep):
                    continue
                os.unlink(os.path.join(here, entry.name))
            except OSError:
                continue
            files += 1
            size += st.st_size
    return files, size
