"""Linux inotify on the event loop: which files in a folder tree were created, written and closed, or moved in.

The events are read in bulk whenever the loop polls, with no thread of its own, and only the ones that
matter are asked for: a file's creation, its last close after writing, a move into the tree. Not every
write: an SFTP upload of 1 GiB would be 4,096 of them, each a wake-up for a watcher thread, on the cores
that serve the upload. Folders created (or moved) into the tree are watched as they appear, and what
they already hold is reported, since it may have arrived before their watch did. Trees are walked
in a thread, folder by folder without recursion and without following links (`feedd.spaces.walk`),
whatever their depth and size.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

from feedd import log
from feedd.spaces import walk

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

MASK = IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
PAUSE = 0.1  # seconds between reads of the event queue
SLICE = 1000  # paths of a tree that appeared, reported per callback
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


class TreeWatch:
    """Calls `changed(paths)` with the files of `root` (and its folders, minus those `skip` names) that
    were created, closed after writing, or moved in; `lost()` when the kernel dropped events, so that
    the caller scans instead."""

    def __init__(self, root: Path, changed: Callable[[list[str]], None], lost: Callable[[], None],
                 skip: Callable[[str], bool] = lambda _path: False) -> None:
        self._root = os.fspath(root)
        self._changed = changed
        self._lost = lost
        self._skip = skip
        self._fd = -1
        self._dirs: dict[int, str] = {}  # watch descriptor -> folder
        self._warned = False
        self._libc = _libc()
        self._resume: asyncio.TimerHandle | None = None
        self._trees: list[str] = []  # folders that appeared, to be watched and reported
        self._walking: asyncio.Future[list[str]] | None = None

    def start(self) -> bool:
        """False where inotify is not available: the caller's periodic scans are then all there is."""
        if self._libc is None:
            return False
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.get().warning("watch.unavailable", error=os.strerror(ctypes.get_errno()))
            return False
        self._fd = fd
        self._add_tree(self._root, report=False)
        asyncio.get_running_loop().add_reader(fd, self._read)
        return True

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _add(self, folder: str) -> bool:
        assert self._libc is not None
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC and not self._warned:
                self._warned = True
                log.get().warning("watch.limit_reached", folder=folder,
                                  hint="raise fs.inotify.max_user_watches; scans still find every file")
            return False
        self._dirs[wd] = folder
        return True

    def _add_tree(self, top: str, *, report: bool) -> list[str]:
        """Watch `top` and the folders below it; the files found there when `report`."""
        found: list[str] = []
        for folder, entries in walk(top, lambda folder: not self._skip(folder) and self._add(folder)):
            if report:
                found += (os.path.join(folder, e.name) for e in entries if not _is_folder(e))
        return found

    def _wake(self) -> None:
        self._resume = None
        if self._fd >= 0:
            asyncio.get_running_loop().add_reader(self._fd, self._read)

    def _read(self) -> None:
        # Every file an SFTP client uploads makes two events. Reading them as they come would wake the
        # loop twice per file; what they start waits for `settle` anyway, so after a read the queue is
        # left to fill for PAUSE (the kernel holds 16,384 events by default, an overflow is noticed).
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        self._resume = loop.call_later(PAUSE, self._wake)
        paths: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            except OSError:
                return
            pos = 0
            while pos + _HEADER.size <= len(data):
                wd, mask, _cookie, size = _HEADER.unpack_from(data, pos)
                name = data[pos + _HEADER.size: pos + _HEADER.size + size].rstrip(b"\0")
                pos += _HEADER.size + size
                if mask & IN_Q_OVERFLOW:
                    self._lost()
                    continue
                if mask & IN_IGNORED:
                    self._dirs.pop(wd, None)
                    continue
                folder = self._dirs.get(wd)
                if folder is None or not name:
                    continue
                path = os.path.join(folder, os.fsdecode(name))
                if mask & IN_ISDIR:
                    if not self._skip(path):
                        self._trees.append(path)
                else:
                    paths.append(path)
        if paths:
            self._changed(paths)
        if self._trees and self._walking is None:
            self._walk_trees()

    def _walk_trees(self) -> None:
        # A folder that appears may hold a whole tree (a partner renames a folder of 100,000 files back
        # and forth): it is walked in a thread, not on the loop that serves the uploads.
        trees, self._trees = self._trees, []
        self._walking = asyncio.get_running_loop().run_in_executor(
            None, lambda: [path for top in trees for path in self._add_tree(top, report=True)])
        self._walking.add_done_callback(self._walked)

    def _walked(self, done: asyncio.Future[list[str]]) -> None:
        self._walking = None
        if self._fd < 0 or done.cancelled():
            return
        if done.exception() is not None:
            log.get().error("watch.walk_failed", error=repr(done.exception()), action="scanning every inbox")
            self._lost()
        else:
            # in slices, each a callback of its own: other work on the loop goes on in between
            paths, loop = done.result(), asyncio.get_running_loop()
            for i in range(0, len(paths), SLICE):
                loop.call_soon(self._changed, paths[i:i + SLICE])
        if self._trees:
            self._walk_trees()
