"""Uploads' bytes: written at once on the event loop, hashed behind it by one thread, in arrival order.

A `pwrite` into the page cache costs the loop less than handing the bytes to a thread would (measured:
with every write done by a thread, the GIL going back and forth between the two cost more CPU than
the writes, and uploads ran at 0.65x of a bare asyncssh server instead of 0.98x). sha256 is the
expensive part, so it runs in the thread, on the other core, while the loop decrypts the next packet.
Small files are not hashed here at all: intake hashes them off the loop, with their fsync. A write
that fails (disk full, I/O error) fails at once. Bytes waiting to be hashed are bounded: past
`HIGH_WATER` new writes wait, and with them the client, so memory stays flat however fast it sends.
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
HASH_FROM = 128 * 1024  # files up to this size are hashed by intake; past it, the thread catches up
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
    error: OSError | None = None  # the write that failed

    @property
    def pending(self) -> bool:
        return self.submitted != self.completed

    @classmethod
    def fresh(cls, fd: int, empty: bool) -> Stream:
        return cls(fd, hashlib.sha256() if empty else None)


_CLOSE = object()


class Writer:
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
            self._thread = threading.Thread(target=self._run, name="feedd-hasher", daemon=True)
            self._thread.start()

    def write(self, s: Stream, data: bytes, offset: int) -> bool:
        """Write at once; True when the caller should wait for room (`wait_room`) before answering.
        A failed write leaves `s.error` set."""
        self._do_write(s, data, offset)
        if s.hasher is None or s.error is not None:
            return False
        if offset != s.frontier:
            s.hasher = None  # out of order: intake hashes the whole file
            return False
        s.frontier = offset + len(data)
        if s.frontier <= HASH_FROM:
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
        """Wait until every write of `s` queued for hashing is hashed."""
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
        while True:
            s, job, offset = self._jobs.get()
            if isinstance(job, bytes):
                self._hash(s, job, offset)
                with self._lock:
                    before = self._pending
                    self._pending -= len(job)
                    woke = before > LOW_WATER >= self._pending
                if woke and self._room is not None:
                    loop.call_soon_threadsafe(self._room.set)
                s.completed += 1
                continue
            if job is _CLOSE:
                with contextlib.suppress(OSError):
                    os.close(s.fd)
            s.completed += 1  # before resolving a flush: the waiter then sees nothing pending
            if isinstance(job, asyncio.Future):
                loop.call_soon_threadsafe(_resolve, job)

    @staticmethod
    def _do_write(s: Stream, data: bytes, offset: int) -> None:
        if s.error is not None:
            return
        try:
            view, pos = memoryview(data), offset
            while view:
                n = os.pwrite(s.fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            s.error = exc

    @staticmethod
    def _hash(s: Stream, data: bytes, offset: int) -> None:
        hasher = s.hasher
        if hasher is None:
            return
        try:
            while s.hashed < offset:  # the first bytes, not queued here: written before this, so on disk
                chunk = os.pread(s.fd, min(offset - s.hashed, 1 << 20), s.hashed)
                if not chunk:
                    raise OSError("short read")
                hasher.update(chunk)
                s.hashed += len(chunk)
        except OSError:
            s.hasher = None
            return
        if offset == s.hashed:
            hasher.update(data)
            s.hashed += len(data)
        else:
            s.hasher = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

