"""Files that reach a space by other means than feedd's SFTP server (local copy, rsync, a mount).

Events come from inotify read on the event loop (`feedd.inotify`; watchfiles where inotify is not
available). A file that another program writes may be closed and opened again, so it is taken once it
has been quiet for `settle`. A reconciliation scan at start and every `sftp.scan_interval` catches
whatever the events missed (downtime, overflow). The same loop sweeps partial uploads older than
`partial_max_age`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch

from feedd import log
from feedd.config import Config
from feedd.drops import Drops
from feedd.inotify import TreeWatch
from feedd.spaces import Space, Spaces


class Watcher:
    name = "watcher"

    def __init__(self, config: Callable[[], Config], spaces: Spaces, drops: Drops) -> None:
        self._config = config
        self._spaces = spaces
        self._drops = drops
        self._seen: dict[tuple[str, str], float] = {}  # (connection, rel) -> last event, monotonic
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rescan = True  # the first tick scans everything: files that arrived while we were down
        self._tree = TreeWatch(spaces.spaces_dir, self._changed, self._lost, skip=self._outbox)

    def _outbox(self, path: str) -> bool:
        return os.path.basename(path) == "outbox" and \
            os.path.dirname(os.path.dirname(path)) == os.fspath(self._spaces.spaces_dir)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick())]
        if not self._tree.start():
            self._tasks.append(loop.create_task(self._watch()))

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

    def _changed(self, paths: list[str]) -> None:
        now = time.monotonic()
        for raw in paths:
            found = self._spaces.locate(raw)
            if found is not None and found[1].startswith("inbox/"):
                self._seen[(found[0].name, found[1])] = now

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
            now = time.monotonic()
            if now >= next_scan or self._rescan:
                self._rescan = False
                await asyncio.to_thread(self._scan_all)
                self._sweep_partials(config)
                next_scan = now + config.sftp.scan_interval
            self._offer_settled(config)
            await asyncio.sleep(min(1.0, max(0.05, config.sftp.settle / 4)))

    def _scan_all(self) -> None:
        """Note every file in every inbox (runs in a thread; `_offer_settled` decides)."""
        now = time.monotonic()
        for space in self._spaces:
            for dirpath, _dirs, files in os.walk(space.inbox):
                for name in files:
                    self._seen.setdefault((space.name, space.rel(Path(dirpath) / name)), now - 1e9)

    def _offer_settled(self, config: Config) -> None:
        now, wall = time.monotonic(), time.time()
        for key, last in list(self._seen.items()):
            if now - last < config.sftp.settle:
                continue
            space = self._spaces.get(key[0])
            if space is None:
                del self._seen[key]
                continue
            path = space.root / key[1]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                del self._seen[key]
                continue
            if os.path.isdir(path):
                del self._seen[key]
                self._note_tree(space, path, now)
                continue
            if wall - st.st_mtime < config.sftp.settle:
                self._seen[key] = now - max(0.0, wall - st.st_mtime)  # look again once it has been quiet
                continue
            del self._seen[key]
            self._drops.offer(space, key[1])

    def _note_tree(self, space: Space, folder: Path, now: float) -> None:
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                self._seen.setdefault((space.name, space.rel(Path(dirpath) / name)), now - 1e9)

    def _sweep_partials(self, config: Config) -> None:
        wall = time.time()
        for space in self._spaces:
            for rel in space.partials():
                if space.writers.get(rel):
                    continue
                path = space.root / rel
                try:
                    age = wall - os.lstat(path).st_mtime
                except FileNotFoundError:
                    space.forget(rel)
                    continue
                if age > config.sftp.partial_max_age:
                    size = path.stat().st_size
                    path.unlink(missing_ok=True)
                    space.forget(rel)
                    space.used = max(0, space.used - size)
                    log.get(connection=space.name).info("sftp.partial_upload_swept", file=rel, size=size,
                                                        age_seconds=round(age))
