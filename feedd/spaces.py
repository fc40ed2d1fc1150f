"""Partners' spaces on disk: the `inbox/` + `outbox/` layout, bytes used (quota), and partial uploads.

Bytes used are counted in memory, as every write happens, and recounted from disk when a space is made.
With several nodes on one store, each node's count moves by what it writes and removes, and the figure
they share is kept in the store (see `feedd.sharing`): a quota is checked against that figure as last
read plus this node's own changes since, never with a round trip per write.

A file open for writing through feedd's SFTP server is a partial upload until the client's own CLOSE:
a client that vanishes, or a daemon that dies, leaves it partial. Partial uploads are never taken, are
kept so the client can resume, and are swept after `sftp.partial_max_age`. Which files are partial is
kept in memory and in a journal per space, `<state_dir>/partials/<connection>/journal`, one line per
change (`+` or `-` and the JSON-quoted path), appended without fsync: a restart replays it. An append
costs microseconds where a marker file per upload cost a file creation, the dearest metadata operation
on the hot path; the journal is rewritten compactly when it grows long.

Several nodes may share one `spaces_dir` and `state_dir`, so what is partial must be known to all of them,
not only to the process that serves the upload. While a file is open for writing through the SFTP server,
and until its upload is complete, it carries the extended attribute `user.feedd.partial` (set on the open
file, one syscall at open and one at completion): it moves with the file on a rename, and every node reads
it before taking a file. The journal is shared too: every append and every rewrite holds an exclusive
`flock` on `.lock` beside it, and a rewrite replays the whole journal (every node's lines) rather than
writing out its own node's view, so no node's lines are lost; each scan re-reads it, so that every node
sweeps the uploads another node left behind. Where the filesystem has no user xattrs, marks are off (one
log line at start) and only the process serving an upload knows it is partial until the next scan.

A space's tree is the partner's to shape, so everything that looks into it here is built not to be led
astray by it: `walk` goes folder by folder with a list of its own, not by recursion (a partner can nest
folders deeper than Python's recursion limit), never follows a link, and checks that each folder it enters
is the one it listed; `open_parent` reaches a file below the root one component at a time, refusing links.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedd import log
from feedd.config import Config, Connection

AREAS = ("inbox", "outbox")
JOURNAL_REWRITE_AT = 4096  # journal lines; rewritten compactly past this when mostly settled changes
# The mark of a partial upload, on the file itself (its value names the node and process, for people).
PARTIAL_MARK = "user.feedd.partial"
MARK_VALUE = f"{socket.gethostname()}:{os.getpid()}".encode()
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Stamp = tuple[int, int, int]  # (inode, size, mtime in ns): a file unchanged since it was last looked at
Listing = tuple[str, list[os.DirEntry[str]]]  # a folder and its entries


def stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def marks_supported(folder: str | Path) -> bool:
    """Whether files in `folder` can carry the partial mark: user xattrs, tried on the folder itself."""
    probe = PARTIAL_MARK + ".probe"
    try:
        os.setxattr(folder, probe, b"", follow_symlinks=False)
        os.removexattr(folder, probe, follow_symlinks=False)
    except OSError:
        return False  # unsupported (ENOTSUP), or refused: either way files here cannot be marked
    return True


def is_marked(path: str | Path) -> bool:
    """Whether the file at `path` (its last component not followed) carries the partial mark. A file that
    is gone, or a filesystem without xattrs, carries none."""
    try:
        # listed rather than read: an unmarked file, nearly every one, costs no exception
        return PARTIAL_MARK in os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, *_NO_XATTRS):
            return False
        raise


def _replay(data: bytes, partial: set[str]) -> set[str]:
    """Apply journal lines to `partial`; a line cut short by a crash mid-append is skipped."""
    for line in data.splitlines():
        try:
            op, rel = line[:1], json.loads(line[1:])
        except ValueError:
            continue
        if op == b"+":
            partial.add(rel)
        elif op == b"-":
            partial.discard(rel)
    return partial


def walk(top: str | Path, enter: Callable[[str], bool] = lambda _path: True) -> Iterator[Listing]:
    """Every folder below `top` (itself included) with its entries, as `(folder, entries)`.

    Iterative, so any depth is fine. Links are entries like any other and are never followed, `top`
    included. A folder is opened with O_NOFOLLOW and must be the very folder that was listed (same
    device and inode): one swapped for a link, anywhere along its path, in between is skipped. So are
    folders that cannot be read, and those `enter` refuses (it sees each folder's path before it is read).
    An entry's `stat()` works only until the next folder is asked for. One folder is open at a time.
    """
    first = os.fspath(top)
    try:
        st = os.lstat(first)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    pending: list[tuple[str, int, int]] = [(first, st.st_dev, st.st_ino)]
    while pending:
        folder, dev, ino = pending.pop()
        if not enter(folder):
            continue
        try:
            fd = os.open(folder, _DIR_FLAGS)
        except OSError:
            continue
        try:
            try:
                here = os.fstat(fd)
                if (here.st_dev, here.st_ino) != (dev, ino):
                    continue
                with os.scandir(fd) as listing:
                    entries = list(listing)
            except OSError:
                continue
            yield folder, entries  # with the folder still open: an entry's stat() is made relative to it
        finally:
            os.close(fd)
        for entry in reversed(entries):
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((os.path.join(folder, entry.name), here.st_dev, entry.inode()))
            except OSError:
                continue


def open_parent(root: str | Path, rel: str) -> tuple[int, str]:
    """An open descriptor of the folder holding `root/rel`, and the file's name in it.

    Reached from `root` (a real path) one component at a time, each opened with O_NOFOLLOW: a link
    anywhere on the way raises OSError (ENOTDIR or ELOOP) instead of leading elsewhere. Whatever is then
    done through the descriptor stays in that folder even if the partner renames folders meanwhile.
    The caller closes the descriptor.
    """
    *folders, name = rel.split("/")
    if not name or name in (".", "..") or any(part in ("", ".", "..") for part in folders):
        raise OSError(f"not a plain path below the root: {rel!r}")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in folders:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def fd_path(fd: int, name: str, fallback: Path) -> Path:
    """A path naming `name` in the open folder `fd`, for code that takes paths. Through Linux's /proc it
    resolves to that very folder, wherever it has been moved, never through a link; elsewhere it is
    `fallback`, the path by name."""
    return Path(f"/proc/self/fd/{fd}/{name}") if _PROC_FD else fallback


_PROC_FD = os.path.isdir("/proc/self/fd")
# How often writes that grow files look at the disk's free space: statvfs is cheap, but not free on
# every 32 KiB write; whichever comes first, per space.
FREE_CHECK_BYTES = 4 * 1024**2
FREE_CHECK_SECONDS = 0.5


@dataclass(eq=False, slots=True)
class Written:
    """A file open for writing, one record for every handle open on it (keyed by its inode, so a rename
    meanwhile changes nothing): its size as the quota counts it. A second handle that truncates the file
    and the first one writing on both meet the same size."""

    key: tuple[int, int]  # (st_dev, st_ino)
    size: int
    handles: int = 0
    failed: str | None = None  # why the upload was given up (and removed): its other handles fail too


@dataclass(slots=True, weakref_slot=True)
class Space:
    """One connection's space. Mutable on purpose: usage and open writers change with every upload."""

    name: str
    root: Path
    marker_dir: Path
    quota: int | None = None
    max_file_size: int | None = None
    max_folder_depth: int = 32  # folders below inbox/ nested at most this deep (made through SFTP)
    max_entries: int = 100_000  # files and folders in inbox/ (made through SFTP)
    # Bytes used, as `used` gives them: the figure last agreed with the store (every node's count, on a
    # shared store) or recounted here, plus what this node has added or freed since (writes in flight
    # included). Only the daemon's sharing loop talks to the store; every other part just sets `used`.
    shared_used: int = 0
    unshared: int = 0
    recounted: bool = False  # measured from disk since the store last heard: the recount is the figure
    entries: int = 0  # files and folders in inbox/: recounted by every scan, kept up by SFTP in between
    writers: Counter[str] = field(default_factory=Counter)  # rel path -> open write handles
    # The SFTP sessions of this space: a rename in one re-keys the open handles of all of them.
    sessions: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    _partial: set[str] = field(default_factory=set)  # partial uploads; the journal says the same
    marks: bool = False  # files open for writing carry PARTIAL_MARK (the filesystem has user xattrs)
    open_files: dict[tuple[int, int], Written] = field(default_factory=dict)  # inode -> its size record
    _free_checked: float = -FREE_CHECK_SECONDS
    _free_written: int = 0
    _journal_lines: int = 0
    _journal: str | None = None
    _lock_fd: int = -1  # `.lock` beside the journal, open while the space is

    @property
    def used(self) -> int:
        return self.shared_used + self.unshared

    @used.setter
    def used(self, value: int) -> None:
        self.unshared = value - self.shared_used

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def rel(self, path: str | Path) -> str:
        """`inbox/a.csv` for a path below the root."""
        text = os.fspath(path)
        root = os.fspath(self.root)
        if text.startswith(root) and text[len(root):len(root) + 1] == "/":
            return text[len(root) + 1:]
        return Path(text).relative_to(self.root).as_posix()  # raises ValueError, as it should

    @property
    def journal(self) -> str:
        if self._journal is None:
            self._journal = os.path.join(self.marker_dir, "journal")
        return self._journal

    @contextlib.contextmanager
    def _journal_lock(self) -> Iterator[None]:
        """The journal to this process alone, against the other nodes sharing it (and other spaces of
        this process for the same connection): an exclusive flock on `.lock` beside it, a file never
        replaced, kept open (two syscalls per append, no lookup). On NFS, flock is a lock on the server
        and taking it revalidates the journal."""
        if self._lock_fd < 0:
            fd = os.open(os.path.join(self.marker_dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            weakref.finalize(self, os.close, fd)
            self._lock_fd = fd
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def load_markers(self) -> None:
        """Replay the journal (and the marker files older versions left, once), then rewrite it compactly.
        With marks on, the uploads it names get their mark (those left by a version without marks): under
        the journal's lock, so that an upload completed meanwhile by another node is not marked again."""
        legacy = [p for p in self.marker_dir.iterdir() if p.name != "journal" and not p.name.startswith(".")] \
            if self.marker_dir.is_dir() else []
        extra = set()
        for marker in legacy:
            with contextlib.suppress(OSError):
                extra.add(marker.read_text())
        with self._journal_lock():
            self._rewrite(b"".join(b"+" + json.dumps(rel).encode() + b"\n" for rel in sorted(extra)))
            if self.marks:
                for rel in self._partial:
                    self._mark_path(rel)
        for marker in legacy:
            marker.unlink(missing_ok=True)

    def _mark_path(self, rel: str) -> None:
        folder = -1
        try:
            folder, name = open_parent(self.root, rel)  # never through a link
            os.setxattr(fd_path(folder, name, self.root / rel), PARTIAL_MARK, MARK_VALUE, follow_symlinks=False)
        except OSError:
            pass  # gone, a link on its way, or not a regular file: nothing to take
        finally:
            if folder >= 0:
                os.close(folder)

    def _read_journal(self) -> bytes:
        try:
            with open(self.journal, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def _rewrite(self, more: bytes = b"") -> None:
        """Rewrite the journal as the uploads it names partial, with `more` lines applied. Replayed from the
        journal itself, not from this process's memory: it holds every node's lines. Under the lock."""
        partial = _replay(self._read_journal() + more, set())
        tmp = self.marker_dir / ".journal.tmp"
        tmp.write_bytes(b"".join(b"+" + json.dumps(rel).encode() + b"\n" for rel in sorted(partial)))
        os.replace(tmp, self.journal)
        self._partial = partial
        self._journal_lines = len(partial)

    def refresh(self) -> None:
        """What every node has recorded as partial, read back from the shared journal: uploads another
        node left behind are swept here too, and those another node completed are no longer partial."""
        with self._journal_lock():
            self._partial = _replay(self._read_journal(), set())

    def _append(self, op: bytes, rel: str) -> None:
        line = op + json.dumps(rel).encode() + b"\n"
        with self._journal_lock():
            if self._journal_lines >= JOURNAL_REWRITE_AT and self._journal_lines >= 4 * len(self._partial):
                self._rewrite(line)
                return
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        self._journal_lines += 1

    def mark_writing(self, rel: str, fd: int | None = None) -> None:
        """One more write handle on `rel`. With `fd` (the open file), the file gets its partial mark first:
        an OSError then means it could not, and nothing was counted."""
        if fd is not None and self.marks:
            try:
                os.setxattr(fd, PARTIAL_MARK, MARK_VALUE)
            except OSError as exc:
                if exc.errno not in _NO_XATTRS:
                    raise
                self._marks_off(exc)
        self.writers[rel] += 1
        self._mark(rel)

    def _marks_off(self, exc: OSError) -> None:
        """The filesystem refused a mark as unsupported (a space on a mount of its own): off for this space."""
        self.marks = False
        log.get(connection=self.name).warning(
            "sftp.partial_marks_off", root=str(self.root), error=exc.strerror,
            action="partial uploads are known only to the node serving them")

    def _mark(self, rel: str) -> None:
        if rel not in self._partial:
            self._partial.add(rel)
            self._append(b"+", rel)

    def done_writing(self, rel: str, *, complete: bool, fd: int | None = None) -> None:
        """One write handle closed. `complete` (a client's own CLOSE) means the file is no longer partial;
        `fd`, still open, is the file whose partial mark then goes. The journal says so before the mark
        goes: a node starting meanwhile marks again only what the journal still names partial."""
        self.writers[rel] -= 1
        if self.writers[rel] <= 0:
            del self.writers[rel]
            if complete:
                self.forget(rel)
                if fd is not None and self.marks:
                    self._unmark(rel, fd)

    def _unmark(self, rel: str, fd: int) -> None:
        try:
            os.removexattr(fd, PARTIAL_MARK)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                return  # another node's handle on the same file completed it first
            if exc.errno in _NO_XATTRS:
                self._marks_off(exc)
                return
            self._mark(rel)  # still partial for every node: the journal says so again
            raise

    def forget(self, rel: str) -> None:
        """The file is gone (removed, taken, renamed away) or complete: it is no longer a partial upload."""
        if rel in self._partial:
            self._partial.discard(rel)
            self._append(b"-", rel)

    def moved(self, old: str, new: str) -> None:
        """A rename of a file or a folder: every open writer and partial upload at `old` or below it
        moves to the new name, so that nothing still being written is taken under the new one."""
        if old == new:
            return
        below = old + "/"

        def renamed(rel: str) -> str | None:
            if rel == old:
                return new
            return new + rel[len(old):] if rel.startswith(below) else None

        for rel, to in [(r, to) for r in self.writers if (to := renamed(r)) is not None]:
            self.writers[to] += self.writers.pop(rel)
        for rel, to in [(r, to) for r in self._partial if (to := renamed(r)) is not None]:
            self.forget(rel)
            self._mark(to)

    @staticmethod
    def depth(rel: str) -> int:
        """How deep a path is below its area: `inbox/a` is 1, `inbox/a/b` is 2."""
        return rel.count("/")

    def full(self, more: int = 1) -> str | None:
        """Why `more` new files or folders do not fit in the inbox, or None when they do."""
        if self.entries + more > self.max_entries:
            return (f"too many files and folders in inbox/ (at most {self.max_entries}, counting folders); "
                    "remove some or wait until feedd has taken them")
        return None

    def written(self, st: os.stat_result) -> Written:
        """The size record of the file `st` describes, shared by its handles; one more handle on it."""
        key = (st.st_dev, st.st_ino)
        record = self.open_files.get(key)
        if record is None:
            record = self.open_files[key] = Written(key, st.st_size)
        record.handles += 1
        return record

    def written_closed(self, record: Written) -> None:
        """One handle on `record` is closed; the record goes with the last one."""
        record.handles -= 1
        if record.handles <= 0 and self.open_files.get(record.key) is record:
            del self.open_files[record.key]

    def free_check_due(self, grown: int) -> bool:
        """Whether a write that grew files by `grown` bytes should look at the disk's free space now."""
        self._free_written += grown
        now = time.monotonic()
        if self._free_written >= FREE_CHECK_BYTES or now - self._free_checked >= FREE_CHECK_SECONDS:
            self._free_written, self._free_checked = 0, now
            return True
        return False

    def files_below(self, folder: str) -> list[str]:
        """The rel paths of the regular files at any depth below `folder`, a path in this space; none when
        a link lies on the way to it (it must be its own real path). Walked without following links."""
        if os.path.realpath(folder) != folder:
            return []
        return [f"{self.rel(here)}/{e.name}" for here, found in walk(folder) for e in found
                if e.is_file(follow_symlinks=False)]

    def is_partial(self, rel: str) -> bool:
        """A partial upload as this node knows it, or as the file's mark tells (any node's upload)."""
        return rel in self._partial or (self.marks and is_marked(os.path.join(self.root, rel)))

    def partials(self) -> list[str]:
        """Every upload left unfinished."""
        return sorted(self._partial)

    def measure(self) -> int:
        """Recount bytes used (sum of file sizes; no sparse files can be made through feedd), and the
        inbox's files and folders."""
        total = entries = 0
        for area in AREAS:
            for _folder, found in walk(self.root / area):
                if area == "inbox":
                    entries += len(found)
                for entry in found:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        self.shared_used, self.unshared, self.recounted, self.entries = total, 0, True, entries
        return total


class Spaces:
    """Every connection's space; created at start and on reload, never deleted by feedd."""

    def __init__(self, config: Config) -> None:
        self.spaces_dir = config.sftp.spaces_dir
        self._prefix = os.fspath(self.spaces_dir) + "/"  # events name paths as strings under this
        self.markers_dir = config.state_dir / "partials"
        self._spaces: dict[str, Space] = {}
        self.spaces_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.marks = marks_supported(self.spaces_dir)
        if not self.marks:
            log.get().warning("sftp.partial_marks_off", spaces_dir=str(self.spaces_dir),
                              reason="the filesystem does not support user extended attributes",
                              action="cross-node partial detection is off: a partial upload is known only to "
                                     "the node serving it; run one node on this spaces_dir")
        self.apply(config)

    def apply(self, config: Config) -> None:
        self.spaces_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        for conn in config.connections.values():
            space = self._spaces.get(conn.name)
            if space is None:
                space = self._create(conn)
                self._spaces[conn.name] = space
            space.quota, space.max_file_size = conn.quota, conn.max_file_size
            space.max_folder_depth = config.sftp.max_folder_depth
            space.max_entries = config.sftp.max_entries_per_space

    def _create(self, conn: Connection) -> Space:
        root = self.spaces_dir / conn.name
        for area in AREAS:
            (root / area).mkdir(parents=True, exist_ok=True, mode=0o750)
        marker_dir = self.markers_dir / conn.name
        marker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        space = Space(conn.name, root.resolve(), marker_dir, marks=self.marks)
        space.load_markers()
        space.measure()
        log.get(connection=conn.name).debug("space ready", root=str(space.root), used=space.used)
        return space

    def get(self, name: str) -> Space | None:
        return self._spaces.get(name)

    def __iter__(self) -> Iterator[Space]:
        return iter(list(self._spaces.values()))

    def locate(self, path: str) -> tuple[Space, str] | None:
        """The space and rel path (`inbox/x.csv`) of a local path, or None when outside every space."""
        prefix = self._prefix
        if not path.startswith(prefix):
            return None
        name, _, rel = path[len(prefix):].partition("/")
        space = self._spaces.get(name)
        if space is None or not rel:
            return None
        return space, rel
