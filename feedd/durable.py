"""The durable file steps every part shares: fsync a file or folder, move or copy a file crash-safely."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

CHUNK = 1024 * 1024


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_and_sync(path: Path, *, sync: bool = True) -> tuple[str, int]:
    """sha256 and size of the file at `path`, read through one fd which is then fsynced (unless the
    caller makes the whole filesystem durable afterwards, see `sync_filesystem`).

    Hashing the fd we keep is what makes the digest describe the bytes we own: the caller has already
    moved the file where no partner can reach it.
    """
    digest, size = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def sync_file(path: Path) -> int:
    """fsync the file's data; returns its size. A failed fsync is not retried (the data may be gone)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _syncfs() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)


_SYNCFS = _syncfs()


def can_sync_filesystem() -> bool:
    return _SYNCFS is not None


def sync_filesystem(folder: Path) -> bool:
    """Make everything written to `folder`'s filesystem durable, data and names, with one journal commit
    (syncfs(2)). For many new files this is far cheaper than a commit per file's fsync; the price is
    that it also writes back whatever else is dirty on that filesystem.

    False, from then on, where the system does not let us call it (a seccomp filter, a kernel or
    sandbox without it): the caller then fsyncs file by file."""
    global _SYNCFS
    if _SYNCFS is None:
        return False
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EPERM):
                _SYNCFS = None
                return False
            raise OSError(err, f"syncfs: {os.strerror(err)}", str(folder))
    finally:
        os.close(fd)
    return True


def move_into(src: Path, dest: Path) -> bool:
    """Move `src` to `dest` (a new name). Returns True for an atomic rename, False for copy + unlink.

    A file with other hard links is copied, not renamed: whoever holds the other link could still
    change the bytes after we took them. Across filesystems we copy too (EXDEV).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    st = os.lstat(src)
    if st.st_nlink == 1:
        try:
            os.rename(src, dest)
            return True
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    copy_whole(src, dest)
    os.unlink(src)
    return False


def low_on_space(folders: tuple[Path, ...], floor: int) -> str | None:
    """Why new uploads must wait, when one of `folders` is on a disk with less than `floor` bytes free:
    refusing them early keeps room for the database, the spool and run outputs."""
    for folder in folders:
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        if st.f_bavail * st.f_frsize < floor:
            return f"the server is low on disk space (under {floor} bytes free); try again later"
    return None


def copy_whole(src: Path, dest: Path) -> Path:
    """Copy `src` to `dest` so that nobody ever sees half of it: a hidden temporary name in the same
    folder, fsync, rename, fsync the folder.

    The temporary name is the same on every try, so a copy cut short by a crash is overwritten by the
    next one rather than left behind (in a partner's outbox, or a destination folder). An exclusive lock
    on it keeps two live writers apart: one that finds it locked uses a name of its own."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.copying")
    fd = _lock_name(tmp)
    if fd is None:
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.copying")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as fout:
        try:
            with open(src, "rb") as fin:
                fout.truncate(0)
                shutil.copyfileobj(fin, fout, CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
            os.replace(tmp, dest)  # while the lock is held: the next writer of this name gets a new file
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(dest.parent)
    return dest


def _lock_name(path: Path) -> int | None:
    """An fd on `path` (created if need be) holding its exclusive lock, or None when another writer holds
    it, or the file it opened was renamed away meanwhile (it may be that writer's finished copy)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, named = os.fstat(fd), os.lstat(path)
        if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None
