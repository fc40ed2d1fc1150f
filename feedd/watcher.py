"""Files that reach a space by other means than feedd's SFTP server (local copy, rsync, a mount).

Events come from inotify read on the event loop (`feedd.inotify`; watchfiles where inotify is not
available). A file that another program writes may be closed and opened again, so it is taken once it
has been quiet for `settle`. A reconciliation scan at start and every `sftp.scan_interval` catches
whatever the events missed (downtime, overflow). The same loop sweeps partial uploads older than
`partial_max_age`.

The loop's own work stays small whatever the inboxes hold: scans and the look at files coming due run
in a thread, at most MAX_PER_TICK files are looked at per tick, and a file the drops have already decided
on (taken, refused, ignored as empty) is not offered again until it changes (`Drops.decided`). An error
in a tick is logged with its traceback and the loop carries on: one bad scan must not end intake of
files that arrive by other means.

Several nodes may share the spaces: a file another node's SFTP session is writing, or left partial,
carries a mark (`feedd.spaces`) and is not taken here, and the sweep deletes only what is still marked
(the uploads every node recorded in the shared journal), never one another node has since completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from watchfiles import awatch

from feedd import failpoints, log, supervisor
from feedd.config import Config
from feedd.drops import Drops
from feedd.inotify import TreeWatch
from feedd.spaces import Space, Spaces, Stamp, fd_path, is_marked, open_parent, stamp, walk

MAX_PER_TICK = 2000  # files looked at per tick at most: a big backlog is worked through over several ticks
SLICE = 500  # files handled on the loop between two chances for other work to run
Key = tuple[str, str]  # (connection, rel)
Ready = tuple[Space, str, Stamp]  # a file to offer, as it was found


@dataclass(frozen=True, slots=True)
class _Scanned:
    """What a scan found in one space: how many entries its inbox holds, and the files not yet decided
    on, with their modification times (wall clock)."""

    space: Space
    entries: int
    fresh: list[tuple[str, float]]


class Watcher:
    name = "watcher"

    def __init__(self, config: Callable[[], Config], spaces: Spaces, drops: Drops,
                 leads: Callable[[], Awaitable[bool]] | None = None) -> None:
        self._config = config
        # Whether this node runs the reconciliation scans now: nodes sharing the spaces take turns, one at a
        # time (the others see the same files). Events are handled by every node, for what it sees.
        self._leads = leads
        self._spaces = spaces
        self._drops = drops
        self._last: dict[Key, float] = {}  # file -> its last sign of life (monotonic)
        self._due: list[tuple[float, Key]] = []  # heap of (last sign of life, file); outdated entries skipped
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rescan = True  # the first tick scans everything: files that arrived while we were down
        self._tree = TreeWatch(spaces.spaces_dir, self._changed, self._lost, skip=self._outbox)

    def _outbox(self, path: str) -> bool:
        return os.path.basename(path) == "outbox" and \
            os.path.dirname(os.path.dirname(path)) == os.fspath(self._spaces.spaces_dir)

    async def start(self) -> None:
        self._tasks = [supervisor.supervise("watcher.tick", self._tick)]
        if not self._tree.start():
            self._tasks.append(supervisor.supervise("watcher.watch", self._watch))

    async def reload(self, config: Config) -> None:
        pass  # reads the live config on every tick

    async def stop(self, deadline: float) -> None:
        self._stop.set()
        self._tree.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _note(self, key: Key, when: float) -> None:
        self._last[key] = when
        heapq.heappush(self._due, (when, key))

    def _changed(self, paths: list[str]) -> None:
        now = time.monotonic()
        for raw in paths:
            found = self._spaces.locate(raw)
            if found is not None and found[1].startswith("inbox/"):
                self._note((found[0].name, found[1]), now)

    def _lost(self) -> None:
        log.get().warning("watch.events_lost", action="scanning every inbox")
        self._rescan = True

    async def _watch(self) -> None:
        """watchfiles, where inotify is not available."""
        root = self._spaces.spaces_dir
        async for changes in awatch(root, stop_event=self._stop, debounce=100, step=50, recursive=True,
                                    ignore_permission_denied=True):
            self._changed([raw for _change, raw in changes])

    async def _tick(self) -> None:
        next_scan = 0.0
        while not self._stop.is_set():
            config = self._config()
            try:
                now = time.monotonic()
                if now >= next_scan or self._rescan:
                    self._rescan = False
                    # set first: a scan that fails is tried again at the next interval, not at every tick
                    next_scan = now + config.sftp.scan_interval
                    if self._leads is None or await self._leads():
                        await self._scan()
                    self._sweep_partials(config)
                await self._offer_settled(config)
            except Exception:
                log.get().exception("watch.tick_failed", action="carrying on; the next scan looks again")
            await asyncio.sleep(min(1.0, max(0.05, config.sftp.settle / 4)))

    async def _scan(self) -> None:
        started = time.monotonic()
        scanned, gone = await asyncio.to_thread(self._scan_all)
        now, wall = time.monotonic(), time.time()
        fresh = 0
        for found in scanned:
            found.space.entries = found.entries
            for i, (rel, mtime) in enumerate(found.fresh, 1):
                key = (found.space.name, rel)
                if key not in self._last:
                    self._note(key, now - max(0.0, wall - mtime))
                    fresh += 1
                if i % SLICE == 0:
                    await asyncio.sleep(0)  # a scan may find 100,000 new files: let the loop breathe
        self._drops.undecide(gone)
        log.get().debug("watch.scanned", spaces=len(scanned), entries=sum(f.entries for f in scanned),
                        new_files=fresh, seconds=round(time.monotonic() - started, 3))

    def _scan_all(self) -> tuple[list[_Scanned], list[Key]]:
        """Every inbox's entries, and the files in them not yet decided on (runs in a thread). Also the
        decided files that are gone, so that the drops forget them."""
        failpoints.hit("watcher.scan")
        decided = self._drops.decided
        before = list(decided)  # taken whole under the GIL: the loop goes on changing `decided`
        present: set[Key] = set()
        out = []
        for space in self._spaces:
            entries = 0
            fresh: list[tuple[str, float]] = []
            for folder, found in walk(space.inbox):
                entries += len(found)
                prefix = space.rel(folder) + "/"
                for entry in found:
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue  # folders are walked; links and special files are never taken
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    key = (space.name, prefix + entry.name)
                    present.add(key)
                    if decided.get(key) != stamp(st):
                        fresh.append((key[1], st.st_mtime))
            out.append(_Scanned(space, entries, fresh))
        return out, [key for key in before if key not in present]

    async def _offer_settled(self, config: Config) -> None:
        """Offer the files quiet for `settle`: at most MAX_PER_TICK of them, looked at in a thread."""
        now, settle = time.monotonic(), config.sftp.settle
        batch: list[Key] = []
        popped = 0
        while self._due and len(batch) < MAX_PER_TICK and popped < 4 * MAX_PER_TICK:
            when, key = self._due[0]
            if now - when < settle:
                break
            heapq.heappop(self._due)
            popped += 1
            if self._last.get(key) == when:
                del self._last[key]
                batch.append(key)
        if not batch:
            return
        ready, later = await asyncio.to_thread(self._examine, batch, settle)
        for i, (space, rel, st) in enumerate(ready, 1):
            self._drops.offer_found(space, rel, st)
            if i % SLICE == 0:
                await asyncio.sleep(0)
        for key, when in later:
            if key not in self._last:
                self._note(key, when)

    def _examine(self, batch: list[Key], settle: float) -> tuple[list[Ready], list[tuple[Key, float]]]:
        """Which of `batch` are files ready to offer, and which to look at again later (with their last
        sign of life): a file still changing, or the files of a folder that appeared. Runs in a thread."""
        now, wall = time.monotonic(), time.time()
        ready: list[Ready] = []
        later: list[tuple[Key, float]] = []
        for key in batch:
            space = self._spaces.get(key[0])
            if space is None:
                continue
            path = os.path.join(space.root, key[1])
            try:
                # contained like the jail does it: no link anywhere below the space's (real) root
                if os.path.realpath(path) != path:
                    continue
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                later += (((space.name, rel), now - 1e9) for rel in space.files_below(path))
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # links and special files are never taken
            age = wall - st.st_mtime
            if age < settle:
                later.append((key, now - max(0.0, age)))  # look again once it has been quiet
            elif self._drops.decided.get(key) != stamp(st):
                ready.append((space, key[1], stamp(st)))
        return ready, later

    def _sweep_partials(self, config: Config) -> None:
        wall = time.time()
        for space in self._spaces:
            space.refresh()  # every node's partial uploads, as the shared journal has them
            for rel in space.partials():
                if space.writers.get(rel):
                    continue
                try:
                    fd, name = open_parent(space.root, rel)  # never through a link
                except OSError:
                    space.forget(rel)
                    continue
                try:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        space.forget(rel)
                        continue
                    if space.marks and not is_marked(fd_path(fd, name, space.root / rel)):
                        # completed through another node (its CLOSE took the mark off): not partial
                        space.forget(rel)
                        continue
                    age = wall - st.st_mtime
                    if age > config.sftp.partial_max_age:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=fd)
                        space.forget(rel)
                        space.used = max(0, space.used - st.st_size)
                        space.entries = max(0, space.entries - 1)
                        log.get(connection=space.name).info("sftp.partial_upload_swept", file=rel, size=st.st_size,
                                                            age_seconds=round(age))
                finally:
                    os.close(fd)
