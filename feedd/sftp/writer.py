"""Write-behind for uploads: one thread does the partners' `pwrite`s and their sha256, in arrival order.

The SFTP event loop only checks limits and queues the bytes, so decrypting the next packet overlaps
with writing and hashing the last one on another core (both release the GIL). A write that fails in
the thread (disk full, I/O error) is reported on the handle's next write or at its CLOSE, where the
partial file is removed. Queued bytes are bounded: past `HIGH_WATER` new writes wait, and with them the
client, so memory stays flat however fast a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

HIGH_WATER = 32 * 1024 * 1024
COALESCE = 4 * 1024 * 1024  # bytes per pwritev at most
INLINE_MAX = 128 * 1024
LOW_WATER = 8 * 1024 * 1024


@dataclass(eq=False, slots=True)
class Stream:
    """What the thread needs of one open upload. `error` and the hash fields are the thread's to write."""

    fd: int
    hasher: Any = None  # hashlib sha256 while writes arrive in order from offset 0; None once they don't
    hashed: int = 0  # bytes fed to the hasher (the thread's to write)
    frontier: int = 0  # end of the writes so far, while they come in order (the loop's to write)
    submitted: int = 0  # jobs queued (the loop's to count)
    completed: int = 0  # jobs done (the thread's to count)
    error: OSError | None = None

    @property
    def pending(self) -> bool:
        return self.submitted != self.completed

    @classmethod
    def fresh(cls, fd: int, empty: bool) -> Stream:
        return cls(fd, hashlib.sha256() if empty else None)


_CLOSE = object()


class WriteBehind:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Stream, object, int]] = queue.SimpleQueue()
        self._pending = 0  # bytes queued, all streams
        self._lock = threading.Lock()
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._room = asyncio.Event()
            self._room.set()
            self._thread = threading.Thread(target=self._run, name="feedd-writer", daemon=True)
            self._thread.start()

    def write(self, s: Stream, data: bytes, offset: int) -> bool:
        """Queue a write; True when the caller should wait for room (`wait_room`) before answering.

        A small write while nothing at all is queued is done at once instead: the page cache takes it in
        microseconds, and small files then skip two thread hand-offs (the write and the flush at CLOSE).
        Such a write is not hashed here, on the loop that answers the client: the thread catches up on it
        from the file with its next write, or intake does, off the loop, with the rest.
        """
        if s.hasher is not None:
            if offset != s.frontier:
                s.hasher = None
            s.frontier = offset + len(data)
        if len(data) <= INLINE_MAX and self._pending == 0 and not s.pending:
            self._do_write(s, [data], offset, len(data), hash_it=False)
            return False
        self._ensure()
        s.submitted += 1
        with self._lock:
            self._pending += len(data)
            full = self._pending > HIGH_WATER
        if full and self._room is not None:
            self._room.clear()
        self._jobs.put((s, data, offset))
        return full

    async def wait_room(self) -> None:
        if self._room is not None:
            await self._room.wait()

    async def flush(self, s: Stream) -> None:
        """Wait until every write queued for `s` is on disk (in the page cache) and hashed."""
        if not s.pending:
            return
        self._ensure()
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        s.submitted += 1
        self._jobs.put((s, fut, 0))
        await fut

    def close_later(self, s: Stream) -> None:
        """Close the fd once the writes queued before this call are done (used when giving up on an upload)."""
        self._ensure()
        s.submitted += 1
        self._jobs.put((s, _CLOSE, 0))

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        carry: tuple[Stream, object, int] | None = None
        while True:
            s, job, offset = carry or self._jobs.get()
            carry = None
            if isinstance(job, bytes):
                # Coalesce the writes already queued for the same stream at the following offsets into one
                # pwritev: fewer syscalls, and fewer trips for the GIL between this thread and the loop.
                bufs, size = [job], len(job)
                while size < COALESCE:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt[0] is s and isinstance(nxt[1], bytes) and nxt[2] == offset + size:
                        bufs.append(nxt[1])
                        size += len(nxt[1])
                    else:
                        carry = nxt
                        break
                self._do_write(s, bufs, offset, size)
                with self._lock:
                    before = self._pending
                    self._pending -= size
                    woke = before > LOW_WATER >= self._pending
                if woke and self._room is not None:
                    loop.call_soon_threadsafe(self._room.set)
                s.completed += len(bufs)
                continue
            if job is _CLOSE:
                with contextlib.suppress(OSError):
                    os.close(s.fd)
            s.completed += 1  # before resolving a flush: the waiter then sees nothing pending
            if isinstance(job, asyncio.Future):
                loop.call_soon_threadsafe(_resolve, job)

    @staticmethod
    def _do_write(s: Stream, bufs: list[bytes], offset: int, size: int, *, hash_it: bool = True) -> None:
        if s.error is not None:
            return
        try:
            views = [memoryview(b) for b in bufs]
            pos = offset
            while views:
                n = os.pwritev(s.fd, views, pos)
                pos += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if views and n:
                    views[0] = views[0][n:]
        except OSError as exc:
            s.error = exc
            return
        hasher = s.hasher
        if hash_it and hasher is not None:
            try:
                while s.hashed < offset:  # written at once on the loop earlier: on disk before this one
                    chunk = os.pread(s.fd, min(offset - s.hashed, 1 << 20), s.hashed)
                    if not chunk:
                        raise OSError("short read")
                    hasher.update(chunk)
                    s.hashed += len(chunk)
            except OSError:
                s.hasher = None
                return
            if offset == s.hashed:
                for b in bufs:
                    hasher.update(b)
                s.hashed += size
            else:
                s.hasher = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

