"""Complete drops: deciding when a file in an inbox is complete, and taking it through intake.

Both the SFTP server (on a client's CLOSE or rename) and the watcher (after `settle`, or in a
reconciliation scan) offer files here; `Drops` applies the same rules to both and makes sure a file
is taken once.

A file is reached from its space's root one folder at a time, never through a link (`open_parent`), and
moved into the spool through that open folder: a link planted in a space, or a folder renamed meanwhile,
cannot make another partner's or the host's file this partner's. Only a regular file with no other hard
link is taken; an empty file is taken like any other (its pipeline decides what 0 bytes mean). What was
decided about a file (offered, refused) is remembered with the file's inode, size and time, so that
scans do not offer it again, nor log it again, until it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import heapq
import itertools
import os
import re
import stat
from collections.abc import Callable
from functools import lru_cache

from feedd import log
from feedd.config import Config
from feedd.durable import low_on_space
from feedd.intake import Input, accept
from feedd.model import Direction, Run, RunStatus, SourceKind
from feedd.reports import place_intake_report
from feedd.spaces import Space, Spaces, Stamp, fd_path, open_parent, stamp
from feedd.store import Store


@lru_cache(maxsize=512)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` stay within one folder; `**/` spans any number of folders (zero included)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@lru_cache(maxsize=16)
def _temp_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for every temporary-name pattern (fnmatch's, case-sensitive): this runs for every CLOSE."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or r"(?!)")


def match_pipeline(config: Config, connection: str, rel: str) -> str | None:
    """The first inbound pipeline (in config order) of `connection` whose `match` takes `rel`."""
    for pipe in config.pipelines.values():
        if (pipe.connection == connection and pipe.direction is Direction.INBOUND
                and any(glob_regex(g).match(rel) for g in pipe.match)):
            return pipe.name
    return None


# Time between a client's CLOSE and the take. Clients look at a file right after uploading it
# (paramiko's put() stats it, WinSCP sets its time): the file must still be there for them.
CLOSE_GRACE = 0.5
# Takes that come due within this long of each other go together, so intake moves, syncs and records
# them as one batch (a take is at most this much later than its time).
GATHER = 0.05
# While drops keep coming due (a client uploading file after file), takes start together at most this
# often. Each batch costs a filesystem sync, a transaction and their hand-offs between threads, on the
# cores that serve the uploads: with OpenSSH's client putting 1,000 files of 100 KiB, 10 interleaved
# rounds, 603 files/s with a batch every 50 ms or so, 636 with one every 0.5 s, and 4% less CPU. A drop
# after a quiet spell is taken at its time, as before.
STREAM_GATHER = 0.5
PARTIAL = "partial upload"


def _present(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class Drops:
    def low_on_space(self) -> str | None:
        config = self._config()
        return low_on_space((config.sftp.spaces_dir, config.state_dir), config.sftp.min_free_space)

    def __init__(self, config: Callable[[], Config], store: Store, spaces: Spaces,
                 accepted: Callable[[], None] = lambda: None) -> None:
        self._config = config
        self._store = store
        self._accepted = accepted  # tells the runner there is work, so it need not wait for its next poll
        self.spaces = spaces
        self.taking: set[tuple[str, str]] = set()  # (connection, rel) being moved into the spool
        self._scheduled: set[tuple[str, str]] = set()  # offered, waiting for their time
        self._due: list[tuple[float, int, Space, str]] = []  # heap: (when, order, space, rel)
        self._order = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._sooner = asyncio.Event()  # an offer came due before the one the timer waits for
        self._started = -STREAM_GATHER  # event-loop time the last takes were started
        self._tasks: set[asyncio.Task[None]] = set()
        # (connection, rel) -> the file as it was when last offered or refused: scans leave it alone
        # until it changes (a take that failed forgets it, so the next scan tries again)
        self.decided: dict[tuple[str, str], Stamp] = {}

    def offer_found(self, space: Space, rel: str, found: Stamp) -> None:
        """A scan or a file event found `rel` quiet, as `found`: offer it, unless it was decided on as it is."""
        key = (space.name, rel)
        if self.decided.get(key) == found:
            return
        self.decided[key] = found
        if not self.offer(space, rel) and self.waiting_reason(space, rel) == PARTIAL:
            # looked at again by every scan: another node may complete it without the file changing here
            # (its mark goes, its bytes and time stay) and then die before taking it
            del self.decided[key]
            log.get(connection=space.name).debug("drop.waiting", file=rel, reason=PARTIAL)

    def undecide(self, keys: list[tuple[str, str]]) -> None:
        """Forget the decisions about files that are gone."""
        for key in keys:
            self.decided.pop(key, None)

    def offer_tree(self, space: Space, folder: str) -> None:
        """Offer every file below `folder` (a real path in the space, e.g. a folder just renamed); the
        folder is walked in a thread, never through a link."""
        task = asyncio.get_running_loop().create_task(self._offer_tree(space, folder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _offer_tree(self, space: Space, folder: str) -> None:
        for i, rel in enumerate(await asyncio.to_thread(space.files_below, folder), 1):
            self.offer(space, rel)
            if i % 500 == 0:
                await asyncio.sleep(0)  # a folder of 100,000 files: other work on the loop goes on meanwhile

    def is_temp(self, rel: str) -> bool:
        temp = _temp_regex(tuple(self._config().sftp.temp_patterns))
        return any(temp.match(part) for part in rel.split("/")[1:])

    def waiting_reason(self, space: Space, rel: str) -> str | None:
        """Why `rel` is not (yet) a complete drop, or None when it is one."""
        if not rel.startswith("inbox/"):
            return "not in the inbox"
        if self.is_temp(rel):
            return "temporary name"
        marker = self._config().sftp.done_marker
        if marker and rel.endswith(marker):
            return "done marker"
        if space.writers.get(rel):
            return "open for writing"
        if space.is_partial(rel):  # this node's, or any node's by the file's mark
            return PARTIAL
        if marker and not (space.root / (rel + marker)).exists():
            return "waiting for its done marker"
        if (space.name, rel) in self.taking:
            return "being taken"
        return None

    def closed(self, space: Space, rel: str) -> None:
        """A client's CLOSE finished writing `rel`: offer it after the grace period."""
        self.offer(space, rel, delay=CLOSE_GRACE)

    def offer(self, space: Space, rel: str, *, delay: float = 0.0) -> bool:
        """Take `rel` in the background if it is complete (now, and again after `delay`).

        A done marker that appears is an offer of the file it stands for. True when a take was scheduled.
        """
        marker = self._config().sftp.done_marker
        if marker and rel.endswith(marker) and len(rel) > len(marker) and not self.is_temp(rel):
            return self.offer(space, rel[: -len(marker)], delay=delay)
        key = (space.name, rel)
        if key in self._scheduled or self.waiting_reason(space, rel) is not None:
            return False
        self._scheduled.add(key)
        loop = asyncio.get_running_loop()
        entry = (loop.time() + delay, next(self._order), space, rel)
        heapq.heappush(self._due, entry)
        if self._timer is None or self._timer.done():
            self._timer = loop.create_task(self._tick())
        elif self._due[0] is entry:
            self._sooner.set()  # e.g. a rename while other files wait out their grace
        return True

    def starts_at(self, due: float) -> float:
        """When a take due at `due` (event-loop time) starts: at its time, unless takes started less than
        STREAM_GATHER before it, in which case it waits to go with the next batch."""
        return max(due, self._started + STREAM_GATHER)

    async def _tick(self) -> None:
        """One timer for every offer: wakes a little after the earliest is due (and not sooner than
        STREAM_GATHER after the last takes started) and starts every take that is due by then, so that
        they reach intake together."""
        loop = asyncio.get_running_loop()
        while self._due:
            wait = self.starts_at(self._due[0][0]) - loop.time()
            if wait > 0:
                self._sooner.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait + GATHER):
                        await self._sooner.wait()
            now = loop.time()
            if self._due and self._due[0][0] <= now:
                self._started = now
            while self._due and self._due[0][0] <= now:
                _, _, space, rel = heapq.heappop(self._due)
                self._scheduled.discard((space.name, rel))
                task = loop.create_task(self._take(space, rel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _take(self, space: Space, rel: str) -> None:
        key = (space.name, rel)
        if self.waiting_reason(space, rel) is not None:
            return  # reopened, renamed or taken meanwhile: a later CLOSE or scan offers it again
        self.taking.add(key)
        config = self._config()
        folder = -1
        try:
            try:
                folder, name = open_parent(space.root, rel)
            except FileNotFoundError:
                return
            except OSError:
                self._refuse(space, rel, None, "a link or a file on its way from the space's root")
                return
            try:
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                return
            if not stat.S_ISREG(st.st_mode):
                self._refuse(space, rel, st, "a link" if stat.S_ISLNK(st.st_mode) else "not a regular file")
                return
            if st.st_nlink > 1:
                # its bytes are also reachable by another name, maybe outside the space: not the partner's to give
                self._refuse(space, rel, st, "the file has other hard links")
                return
            pipeline = match_pipeline(config, space.name, rel)
            # moved through the open folder: where it was checked, whatever is renamed meanwhile
            item = Input(space.name, SourceKind.SFTP, rel, fd_path(folder, name, space.root / rel), pipeline)
            try:
                run = await accept(self._store, config, item, pipeline=pipeline)
            except FileNotFoundError:
                if _present(folder, name):
                    raise
                # another node sharing the space took it first (both saw it complete)
                log.get(connection=space.name).debug("drop.taken_elsewhere", file=rel)
                self.decided.pop(key, None)
                return
            self._accepted()
            space.used = max(0, space.used - run.source.size)
            space.entries = max(0, space.entries - 1)
            space.forget(rel)
            self.decided.pop(key, None)
            await self._report(config, space, run)
            if config.sftp.done_marker:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name + config.sftp.done_marker, dir_fd=folder)
        except Exception:
            self.decided.pop(key, None)  # the next scan tries again
            log.get(connection=space.name).exception("drop.take_failed", file=rel)
        finally:
            self.taking.discard(key)
            if folder >= 0:
                os.close(folder)

    @staticmethod
    async def _report(config: Config, space: Space, run: Run) -> None:
        """A drop intake failed (a duplicate, no matching pipeline) is never processed: its report is placed
        here, so that the partner hears of it. The file is taken whatever happens to its report."""
        if run.status is not RunStatus.FAILED:
            return
        try:
            space.used += await asyncio.to_thread(place_intake_report, config, run, space.outbox)
        except Exception:
            log.get(connection=space.name, run_id=run.run_id).exception("drop.report_failed", file=run.source.name)

    def _refuse(self, space: Space, rel: str, st: os.stat_result | None, why: str) -> None:
        if st is not None:
            self.decided[(space.name, rel)] = stamp(st)
        log.get(connection=space.name).warning("drop.refused", file=rel, reason=why,
                                               action="not taken; the server's administrator should look")

    async def drain(self, deadline: float) -> None:
        """Wait for takes, those in flight and those coming due (they are short), until `deadline`,
        event-loop time. What is left is found again by the reconciliation scan at the next start."""
        loop = asyncio.get_running_loop()
        while (self._tasks or self._due) and (remaining := deadline - loop.time()) > 0:
            waiting = [*self._tasks, *([self._timer] if self._timer and not self._timer.done() else [])]
            if not waiting:
                break
            await asyncio.wait(waiting, timeout=remaining)
        if self._timer is not None:
            self._timer.cancel()
