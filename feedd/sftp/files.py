"""The SFTP subsystem for one session: every file operation confined to the partner's space.

Writes are checked against `max_file_size` and `quota` before they touch the disk, and a write may not
start past the file's end (no sparse files); growth is counted against one size record per open file,
shared by all its handles, so a handle that truncates the file and another that rewrites it are both
counted. Writes that grow files also look at the disk's free space now and then (`min_free_space`), not
only at open. The partial file is removed at the write that crosses a limit. A client's own
CLOSE of a written handle completes an upload and offers it for intake; a handle closed because the
client vanished leaves a partial upload behind, which is never taken. From OPEN to that CLOSE the file
carries the partial mark (`feedd.spaces`), so that no other node sharing the spaces takes it meanwhile;
a file that cannot be marked is not opened for writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncssh
from asyncssh import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPAttrs,
    SFTPFailure,
    SFTPName,
    SFTPNoSpaceOnFilesystem,
    SFTPOpUnsupported,
    SFTPPermissionDenied,
    SFTPQuotaExceeded,
)

from feedd import log, metrics
from feedd.sftp.jail import Area, Jail, Op, Target, refuse_hard_link
from feedd.sftp.writer import Stream, write
from feedd.spaces import Written, walk

if TYPE_CHECKING:
    from feedd.drops import Drops
    from feedd.sftp.auth import Gate
    from feedd.spaces import Space

MAX_HANDLES = 64  # open files per session
# The most one READ returns, as OpenSSH's sftp-server (and `limits@openssh.com` says so): a READ may ask
# for up to 4 GiB, and every byte of a reply is held, and copied several times, until the client takes it.
MAX_READ = 261120


@dataclass(eq=False, slots=True)
class Handle:
    fd: int
    target: Target
    rel: str  # of the real file, relative to the space root
    stream: Stream | None = None  # set for handles open for writing
    written: Written | None = None  # ... and the file's size record, shared with its other handles
    append: bool = False
    failed: str | None = None

    @property
    def writable(self) -> bool:
        return self.stream is not None

    @property
    def size(self) -> int:
        return self.written.size if self.written is not None else 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """asyncssh answers `ranges@asyncssh.com` (where a file has data) through this; its client asks
        before every download."""
        return os.lseek(self.fd, offset, whence)


@dataclass(slots=True)
class Session:
    """What a session needs from the service: the space, intake, and the login it belongs to."""

    space: Space
    drops: Drops
    gate: Gate
    on_exit: Callable[[], None] = field(default=lambda: None)


class SpaceSFTPServer(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], session: Session) -> None:
        super().__init__(chan)
        self._s = session
        self._space = session.space
        self._jail = Jail(session.space.root)
        self._handles: set[Handle] = set()
        self._log = log.get(connection=session.space.name)
        session.space.sessions.add(self)  # so that a rename in any session re-keys this one's handles

    # --- paths -------------------------------------------------------------------------------------

    def _resolve(self, path: bytes, op: Op, *, follow: bool = True) -> Target:
        self._s.gate.touch()
        target = self._jail.resolve(path, op, follow=follow)
        if op is Op.WRITE and not os.path.lexists(target.real) and os.path.isdir(os.path.dirname(target.real)):
            self._admit(target)  # a file about to be created
        return target

    def _admit(self, target: Target) -> None:
        """Count a new file or folder in the inbox, or refuse it past `max_entries_per_space`."""
        if (full := self._space.full()) is not None:
            raise SFTPQuotaExceeded(f"{target.virtual}: {full}")
        self._space.entries += 1

    def map_path(self, path: bytes) -> bytes:
        return os.fsencode(self._resolve(path, Op.READ).real)

    def reverse_map_path(self, path: bytes) -> bytes:
        return self._jail.reverse(os.fsdecode(path)).encode()

    def realpath(self, path: bytes) -> bytes:
        target = self._resolve(path, Op.READ) if path not in (b"", b".") else self._resolve(b"/", Op.READ)
        if os.path.lexists(target.local):
            return self._jail.reverse(target.real).encode()
        return target.virtual.encode()

    # --- metadata ----------------------------------------------------------------------------------

    def stat(self, path: bytes) -> os.stat_result:
        return os.stat(self._resolve(path, Op.READ).real)

    def lstat(self, path: bytes) -> os.stat_result:
        target = self._resolve(path, Op.READ, follow=False)
        st = os.lstat(target.local)
        if stat.S_ISLNK(st.st_mode):
            self._jail.resolve(path, Op.READ)  # a link leading out of the space does not exist
        return st

    def fstat(self, file_obj: object) -> os.stat_result:
        handle = self._checked(file_obj)
        return os.fstat(handle.fd)

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        self._setstat(self._resolve(path, Op.SETSTAT).real, attrs)

    def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        self._setstat(self._resolve(path, Op.SETSTAT).real, attrs)

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        handle = self._checked(file_obj)
        if not handle.writable:
            raise SFTPPermissionDenied("file not open for writing")
        if handle.failed:
            raise SFTPFailure(handle.failed)
        self._setstat(handle.fd, attrs, handle.written)

    def _setstat(self, where: str | int, attrs: SFTPAttrs, written: Written | None = None) -> None:
        # Times may change (clients preserve them); size may only shrink a file being uploaded (see
        # _set_size); owner and mode are ignored, as an SFTP server without shell users should.
        if attrs.size is not None:
            self._set_size(where, attrs.size, written)
        if attrs.atime is not None or attrs.mtime is not None:
            st = os.stat(where)
            atime = attrs.atime if attrs.atime is not None else st.st_atime
            mtime = attrs.mtime if attrs.mtime is not None else st.st_mtime
            os.utime(where, (atime, mtime))

    def _set_size(self, where: str | int, size: int, written: Written | None) -> None:
        """Clients finish an upload by setting the size to what they wrote (OpenSSH's scp and `sftp
        put`): allowed while the file is open for writing, up to its size as its handles have made it,
        with the quota given back what is cut. Growing a file that way would make a sparse file (its size
        not what it takes on disk), and a file no longer being written may already be on its way to
        intake: neither is allowed."""
        st = os.stat(where, follow_symlinks=False) if isinstance(where, str) else os.fstat(where)
        record = written if written is not None else self._space.open_files.get((st.st_dev, st.st_ino))
        if record is None or not stat.S_ISREG(st.st_mode):
            if size == st.st_size:
                return  # nothing changes
            raise SFTPPermissionDenied("changing the size of a file is allowed only while it is being uploaded")
        if record.failed:
            raise SFTPFailure(record.failed)
        if size > record.size:
            raise SFTPPermissionDenied(
                f"a size of {size} bytes would make the file larger than what was written to it "
                f"({record.size} bytes); files grow only by writing (no sparse files)")
        if size == record.size:
            return
        if isinstance(where, int):
            os.ftruncate(where, size)
        else:
            fd = os.open(where, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != record.key:  # the name moved to another file meanwhile
                    raise SFTPPermissionDenied("the file changed while its size was being set; try again")
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        self._space.used = max(0, self._space.used - (record.size - size))
        record.size = size

    def statvfs(self, path: bytes) -> os.statvfs_result:
        return os.statvfs(self._resolve(path, Op.READ).real)

    # --- folders -----------------------------------------------------------------------------------

    def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        # A plain function returning an iterator, so a bad path fails at OPENDIR, not at the first READDIR.
        target = self._resolve(path, Op.READ)
        names: list[SFTPName] = []
        for dot in (b".", b".."):
            names.append(SFTPName(dot, attrs=SFTPAttrs.from_local(os.stat(target.real))))
        with os.scandir(target.real) as entries:
            for entry in entries:
                if target.area is Area.ROOT and entry.name not in ("inbox", "outbox"):
                    continue
                try:
                    attrs = SFTPAttrs.from_local(entry.stat(follow_symlinks=False))
                except OSError:
                    continue
                names.append(SFTPName(os.fsencode(entry.name), attrs=attrs))

        async def listing() -> AsyncIterator[SFTPName]:
            for name in names:
                yield name

        return listing()

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        target = self._resolve(path, Op.MKDIR, follow=False)
        if self._space.depth(self._space.rel(target.real)) > self._space.max_folder_depth:
            raise SFTPPermissionDenied(f"{target.virtual}: folders nest at most {self._space.max_folder_depth} "
                                       "deep below inbox/")
        self._admit(target)
        try:
            os.mkdir(target.local, 0o750)
        except BaseException:
            self._space.entries -= 1
            raise

    def rmdir(self, path: bytes) -> None:
        os.rmdir(self._resolve(path, Op.REMOVE, follow=False).local)
        self._space.entries = max(0, self._space.entries - 1)

    def remove(self, path: bytes) -> None:
        target = self._resolve(path, Op.REMOVE, follow=False)
        st = os.lstat(target.local)
        if stat.S_ISDIR(st.st_mode):
            raise SFTPFailure(f"{target.virtual} is a folder: use rmdir")
        os.remove(target.local)
        if stat.S_ISREG(st.st_mode):
            self._space.used = max(0, self._space.used - st.st_size)
        self._space.entries = max(0, self._space.entries - 1)
        self._space.forget(self._space.rel(target.real))

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._rename(oldpath, newpath, replace=False)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._rename(oldpath, newpath, replace=True)

    def _rename(self, oldpath: bytes, newpath: bytes, *, replace: bool) -> None:
        old = self._resolve(oldpath, Op.RENAME, follow=False)
        new = self._resolve(newpath, Op.RENAME, follow=False)
        space = self._space
        old_rel, new_rel = space.rel(old.real), space.rel(new.real)  # the keys writers and partials have
        if (space.name, old_rel) in self._s.drops.taking:
            raise SFTPFailure(f"{old.virtual} is being taken for processing")
        st = os.lstat(old.local)
        if stat.S_ISLNK(st.st_mode):
            # A link is the server administrator's: moved, it could stand in for a file being taken.
            raise SFTPPermissionDenied(f"{old.virtual} is a link; links cannot be renamed")
        folder = stat.S_ISDIR(st.st_mode)
        if folder and any(c == space.name and r.startswith(old_rel + "/") for c, r in self._s.drops.taking):
            # the file would be opened again under its new name while it moves into the spool
            raise SFTPFailure(f"{old.virtual} holds a file being taken for processing; try again in a moment")
        if folder and space.depth(new_rel) > space.depth(old_rel):  # moved up or across, it nests no deeper
            below = max((here[len(old.real):].count("/") for here, _ in walk(old.real)), default=0)
            if space.depth(new_rel) + below > space.max_folder_depth:
                raise SFTPPermissionDenied(f"{new.virtual}: folders nest at most {space.max_folder_depth} "
                                           "deep below inbox/, and this would nest them deeper")
        replaced = 0
        if os.path.lexists(new.local):
            if not replace:
                raise asyncssh.SFTPFileAlreadyExists(f"{new.virtual} already exists")
            gone = os.lstat(new.local)
            replaced = gone.st_size if stat.S_ISREG(gone.st_mode) else 0
            if not space.writers.get(new_rel):
                space.forget(new_rel)  # what replaced it is no partial upload unless it was one
            space.entries = max(0, space.entries - 1)
        os.replace(old.local, new.local) if replace else os.rename(old.local, new.local)
        space.used = max(0, space.used - replaced)
        # Everything open or partial at the old name or below it moves along: nothing still being written
        # is taken under the new name, and a handle's CLOSE completes the upload where it now is.
        space.moved(old_rel, new_rel)
        below_old = old_rel + "/"
        for session in list(space.sessions):
            for h in session._handles:
                if h.rel == old_rel or h.rel.startswith(below_old):
                    h.rel = new_rel + h.rel[len(old_rel):]
        # A rename from a temporary name to a final one completes an upload.
        if folder:
            self._s.drops.offer_tree(space, new.real)
        else:
            self._s.drops.offer(space, new_rel)

    def readlink(self, path: bytes) -> bytes:
        target = self._resolve(path, Op.READ, follow=False)
        if not os.path.islink(target.local):
            raise SFTPFailure(f"{target.virtual} is not a link")
        return self._jail.reverse(self._resolve(path, Op.READ).real).encode()

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise SFTPOpUnsupported("creating links is not supported")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise SFTPOpUnsupported("creating links is not supported")

    # --- files -------------------------------------------------------------------------------------

    def _handle(self, file_obj: object) -> Handle:
        if not isinstance(file_obj, Handle):
            raise asyncssh.SFTPInvalidHandle("invalid handle")
        return file_obj

    def _checked(self, file_obj: object) -> Handle:
        """The handle, for operations that ask after a write's outcome (a failed write fails them too)."""
        h = self._handle(file_obj)
        if h.stream is not None and h.stream.error is not None:
            self._fail_io(h)
        return h

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Handle:
        writing = bool(pflags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC))
        target = self._resolve(path, Op.WRITE if writing else Op.READ)
        if len(self._handles) >= MAX_HANDLES:
            raise SFTPFailure(f"too many open files in this session (at most {MAX_HANDLES})")
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        if not writing:
            fd = os.open(target.real, flags | os.O_RDONLY)
            return self._track(Handle(fd, target, self._space.rel(target.real)))
        rel = self._space.rel(target.real)
        if (low := self._s.drops.low_on_space()) is not None:
            raise SFTPNoSpaceOnFilesystem(low)
        if (self._space.name, rel) in self._s.drops.taking:
            raise SFTPFailure(f"{target.virtual} is being taken for processing; upload it again under a new name")
        flags |= os.O_RDWR if pflags & FXF_READ else os.O_WRONLY
        flags |= (os.O_CREAT if pflags & FXF_CREAT else 0) | (os.O_EXCL if pflags & FXF_EXCL else 0)
        fd = os.open(target.real, flags, 0o640)
        marked = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SFTPPermissionDenied(f"{target.virtual} is not a regular file")
            refuse_hard_link(st, target.virtual)  # writing through it would change a file elsewhere
            self._mark(fd, st, rel, target, created=bool(pflags & FXF_CREAT))
            marked = True
            truncated = bool(pflags & FXF_TRUNC and st.st_size)
            if truncated:
                # truncated here rather than with O_TRUNC, so the quota gets back what the file really had
                os.ftruncate(fd, 0)
                self._space.used = max(0, self._space.used - st.st_size)
        except BaseException:
            if marked:
                self._space.done_writing(rel, complete=False)  # changed half-way: still partial
            os.close(fd)
            raise
        written = self._space.written(st)
        if truncated:
            written.size = 0  # for every handle on the file: what they write again counts again
        handle = Handle(fd, target, rel, stream=Stream(fd), written=written, append=bool(pflags & FXF_APPEND))
        return self._track(handle)

    def _mark(self, fd: int, st: os.stat_result, rel: str, target: Target, *, created: bool) -> None:
        """Count the handle as writing `rel` and mark the file partial for every node sharing the space,
        before anything is written. A file that cannot be marked is not written: any node could take it
        half-written. An empty file this open may have made goes again, or it would be taken as empty."""
        try:
            self._space.mark_writing(rel, fd)
        except OSError as exc:
            if created and not st.st_size:
                with contextlib.suppress(OSError):
                    now = os.lstat(target.real)
                    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                        os.unlink(target.real)
                        self._space.entries = max(0, self._space.entries - 1)
            self._log.warning("sftp.partial_mark_failed", file=target.virtual, error=exc.strerror)
            raise SFTPFailure(f"{target.virtual}: the server could not mark the file as an upload in progress "
                              f"({exc.strerror}); try again later") from exc

    def _track(self, handle: Handle) -> Handle:
        self._handles.add(handle)
        return handle

    def read(self, file_obj: object, offset: int, size: int) -> bytes | Awaitable[bytes]:
        # A short read is what SFTP clients expect at any size: they ask again for the rest.
        self._s.gate.touch()
        return os.pread(self._handle(file_obj).fd, min(size, MAX_READ), offset)

    def write(self, file_obj: object, offset: int, data: bytes) -> int | Awaitable[int]:
        self._s.gate.touch()
        h = self._handle(file_obj)
        if h.stream is None or h.written is None:
            raise SFTPPermissionDenied("file not open for writing")
        if h.failed:
            raise SFTPFailure(h.failed)
        written = h.written
        if written.failed:  # another handle on the same file crossed a limit: the upload is gone
            self._fail(h, SFTPFailure(written.failed))
        if h.stream.error is not None:
            self._fail_io(h)
        if h.append:
            offset = written.size
        metrics.SFTP_BYTES.inc(len(data))
        end = offset + len(data)
        space = self._space
        if space.max_file_size is not None and end > space.max_file_size:
            self._fail(h, SFTPQuotaExceeded(
                f"{h.target.virtual}: larger than max_file_size ({space.max_file_size} bytes): "
                f"write of {len(data)} bytes at offset {offset}; the upload was removed"))
        if offset > written.size:
            # the gap would be a hole: a sparse file, whose size is not what it takes on disk
            raise SFTPFailure(f"{h.target.virtual}: a write at offset {offset} would leave a gap after the end of "
                              f"the file ({written.size} bytes); files are written from their start, without gaps")
        # Counted against the file's size as every handle on it sees it, not this handle's own idea of it.
        growth = max(0, end - written.size)
        if growth and space.quota is not None and space.used + growth > space.quota:
            self._fail(h, SFTPQuotaExceeded(
                f"{h.target.virtual}: quota exceeded ({space.used} of {space.quota} bytes used, this write needs "
                f"{growth} more); the upload was removed"))
        if growth and space.free_check_due(growth) and (low := self._s.drops.low_on_space()) is not None:
            self._fail(h, SFTPNoSpaceOnFilesystem(f"{h.target.virtual}: {low}; the upload was removed"))
        write(h.stream, data, offset)
        written.size = max(written.size, end)
        space.used += growth
        if h.stream.error is not None:
            self._fail_io(h)
        return len(data)

    def _fail_io(self, h: Handle) -> None:
        assert h.stream is not None
        exc = h.stream.error
        assert exc is not None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self._fail(h, SFTPNoSpaceOnFilesystem(f"{h.target.virtual}: no space left on the server; "
                                                  "the upload was removed"))
        self._fail(h, SFTPFailure(f"{h.target.virtual}: write failed on the server ({exc.strerror}); "
                                  "the upload was removed"))

    def _fail(self, h: Handle, error: asyncssh.SFTPError) -> None:
        """Give up on an upload: close it, remove the partial file, keep refusing this handle."""
        h.failed = str(error.reason)
        if h.stream is not None and h.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(h.fd)
        h.fd = -1
        written, h.written = h.written, None
        if written is not None:
            if written.failed is None:  # the first handle to fail removes the file, for all of them
                written.failed = h.failed
                path = os.path.join(self._space.root, h.rel)
                with contextlib.suppress(OSError):
                    # Only the file this handle wrote: one removed meanwhile gave its bytes back then, and
                    # another file may have its name now.
                    st = os.lstat(path)
                    if (st.st_dev, st.st_ino) == written.key:
                        os.unlink(path)
                        self._space.used = max(0, self._space.used - written.size)
                written.size = 0
            self._space.written_closed(written)
        self._space.done_writing(h.rel, complete=True)
        self._log.warning("sftp.upload_refused", file=h.target.virtual, reason=h.failed)
        raise error

    async def fsync(self, file_obj: object) -> None:
        h = self._checked(file_obj)
        await asyncio.to_thread(os.fsync, h.fd)

    async def close(self, file_obj: object) -> None:
        if not isinstance(file_obj, Handle):
            raise asyncssh.SFTPInvalidHandle("invalid handle")
        h = file_obj
        self._handles.discard(h)
        if h.failed:
            return
        if h.stream is not None and h.stream.error is not None:
            self._fail_io(h)
        fd, h.fd = h.fd, -1
        if h.stream is None or h.written is None:
            os.close(fd)
            return
        size = h.written.size
        self._space.written_closed(h.written)
        h.written = None
        # asyncssh also calls close() for handles left open when the client goes away: that is a partial
        # upload, not a finished one, and the channel is already closing then (a real CLOSE has it open).
        abrupt = self._s.gate.conn is None or self.channel.is_closing()
        try:
            self._space.done_writing(h.rel, complete=not abrupt, fd=fd)  # its partial mark goes through fd
        finally:
            os.close(fd)
        if abrupt:
            self._log.info("sftp.partial_upload_kept", file=h.target.virtual, size=size)
            return
        self._s.drops.closed(self._space, h.rel)

    def exit(self) -> None:
        self._s.on_exit()
