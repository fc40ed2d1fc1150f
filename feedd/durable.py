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
NAME_MAX = 255  # bytes in one file name on Linux filesystems (ext4, xfs, btrfs) and most SFTP servers
_EXT_PIECE = 16  # a trailing `.piece` at most this long counts as part of the extension
_EXT_MAX = 40  # bytes of extension kept when a name is shortened


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """`name` itself when its UTF-8 form fits in `limit` bytes; otherwise its stem cut short, a short
    hash of the whole name (two long names that differ only at the end stay apart) and its extension
    (`.csv.report.json`), so that what a partner sees still says what the file is.

    Every name feedd derives from a partner's file name (spool entries, outbox reports, outputs, the
    temporary names beside them) goes through here: a name a partner may upload can be 255 bytes
    already, and ENAMETOOLONG then would fail the file at whatever step added a suffix."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    ext = ""
    stem = name
    while "." in stem[1:]:
        head, piece = stem.rsplit(".", 1)
        candidate = f".{piece}{ext}"
        if not head or len(piece.encode("utf-8", "surrogateescape")) > _EXT_PIECE \
                or len(candidate.encode("utf-8", "surrogateescape")) > min(_EXT_MAX, limit // 4):
            break
        stem, ext = head, candidate
    tag = "~" + hashlib.sha256(raw).hexdigest()[:10]
    room = max(0, limit - len(ext.encode("utf-8", "surrogateescape")) - len(tag))
    # cut at a byte count, then drop a character the cut split in two
    cut = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return cut + tag + ext


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
    tmp = dest.with_name(temp_name(dest.name, ".copying"))
    fd = _lock_name(tmp)
    if fd is None:
        tmp = dest.with_name(temp_name(dest.name, f".{os.getpid()}.{threading.get_ident()}.copying"))
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


def write_whole(dest: Path, data: bytes) -> Path:
    """Write `data` to `dest` so that nobody ever sees half of it (a hidden temporary name beside it, fsync,
    rename, fsync the folder). For small texts feedd makes itself; one writer per name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(temp_name(dest.name, ".writing"))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest


def temp_name(name: str, suffix: str) -> str:
    """The hidden temporary name `.<name><suffix>` beside `name`, within NAME_MAX bytes."""
    return fit_name("." + name, NAME_MAX - len(suffix.encode())) + suffix


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
