"""A partner's view of its space: client paths -> local paths that never leave the space, and who may do what.

Containment is decided on resolved real paths with `os.path.commonpath`, never on string prefixes
(`acme` vs `acme2`), and never by trusting a link: a link planted inside a space is followed only
when where it leads is still inside that space.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from asyncssh import SFTPInvalidFilename, SFTPNoSuchFile, SFTPPermissionDenied

MAX_NAME_BYTES = 255
# Control characters, bidi overrides (names that display differently from what they are) and lone
# surrogates (bytes that were not UTF-8).
_BAD_CHAR = re.compile("[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


class Area(StrEnum):
    ROOT = "root"  # `/` itself
    TOP = "top"  # `/inbox` or `/outbox` themselves
    INBOX = "inbox"  # anything below /inbox
    OUTBOX = "outbox"  # anything below /outbox


class Op(StrEnum):
    READ = "read"  # open for reading, stat, list, realpath
    WRITE = "write"  # open for writing or creating
    MKDIR = "mkdir"
    REMOVE = "remove"  # remove a file, or rmdir
    RENAME = "rename"  # as source or target
    SETSTAT = "setstat"


_ALLOWED = {
    Area.ROOT: {Op.READ},
    Area.TOP: {Op.READ},
    Area.INBOX: set(Op),
    Area.OUTBOX: {Op.READ, Op.REMOVE},
}


@dataclass(frozen=True, slots=True)
class Target:
    virtual: str  # what the client sees: /inbox/a.csv
    local: Path  # lexical local path (the link itself, if it is one)
    real: Path  # where it really is (links resolved), proven inside the space
    area: Area

    @property
    def rel(self) -> str:
        """Path relative to the space root (`inbox/a.csv`), by the lexical name the client used."""
        return self.virtual.lstrip("/")

    @property
    def name(self) -> str:
        return posixpath.basename(self.virtual)


def check_name(name: str) -> None:
    """Refuse names a partner could use to confuse people or tools downstream."""
    if len(name) * 4 > MAX_NAME_BYTES and len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise SFTPInvalidFilename(f"name longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}...")
    if bad := _BAD_CHAR.search(name):
        raise SFTPInvalidFilename(f"name contains a control or invalid character {bad.group()!r}: {name!r}")


class Jail:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def virtual(self, path: bytes) -> str:
        """The normalised client path, `/`-rooted, `..` unable to climb above `/`."""
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise SFTPInvalidFilename(f"path is not valid UTF-8: {path!r}") from None
        if "\x00" in text:
            raise SFTPInvalidFilename("path contains a NUL byte")
        norm = posixpath.normpath(posixpath.join("/", text))
        norm = "/" + norm.lstrip("/")  # normpath keeps a leading '//'
        for part in norm.split("/"):
            if part:
                check_name(part)
        return norm

    def inside(self, real: str | Path) -> bool:
        real_s = os.fspath(real)
        return os.path.commonpath([os.fspath(self.root), real_s]) == os.fspath(self.root)

    def area_of(self, real: Path) -> Area:
        rel = real.relative_to(self.root).parts
        if not rel:
            return Area.ROOT
        if rel[0] not in ("inbox", "outbox"):
            raise SFTPNoSuchFile("No such file")
        if len(rel) == 1:
            return Area.TOP
        return Area.INBOX if rel[0] == "inbox" else Area.OUTBOX

    def resolve(self, path: bytes, op: Op, *, follow: bool = True) -> Target:
        """Map and authorise. `follow=False` acts on a final link itself (lstat, remove, rename)."""
        virtual = self.virtual(path)
        local = self.root / virtual.lstrip("/")
        if local == self.root:
            if op not in _ALLOWED[Area.ROOT]:
                raise SFTPPermissionDenied(_denied(virtual, Area.ROOT, op))
            return Target(virtual, local, self.root, Area.ROOT)
        parts = virtual.lstrip("/").split("/")
        parent_real = self._real(parts[:-1])
        if not self.inside(parent_real):
            raise SFTPNoSuchFile("No such file")
        if follow:
            real = self._real(parts, parent_real)
            if not self.inside(real):
                # a link leading out of the space: as if nothing were there
                raise SFTPNoSuchFile("No such file")
        else:
            real = Path(parent_real, parts[-1])
        try:
            area = self.area_of(real)
        except SFTPNoSuchFile:
            if op is Op.READ:
                raise
            raise SFTPPermissionDenied(f"{virtual}: only inbox/ and outbox/ exist at the top") from None
        if op not in _ALLOWED[area]:
            raise SFTPPermissionDenied(_denied(virtual, area, op))
        return Target(virtual, local, real, area)

    def _real(self, parts: list[str], parent: str | Path | None = None) -> Path:
        """`realpath` of root/parts, walking only the components below the root (the root is known real).

        Same answer as os.path.realpath, with a few lstat calls instead of one per component from `/`.
        `parent` is the already resolved real path of parts[:-1], when the caller has it.
        """
        if parent is not None:
            start, rest = os.fspath(parent), parts[-1:]
        else:
            start, rest = os.fspath(self.root), parts
        current = start
        for i, part in enumerate(rest):
            candidate = os.path.join(current, part)
            try:
                mode = os.lstat(candidate).st_mode
            except OSError:
                # missing from here on: the rest is lexical, as realpath would leave it
                return Path(candidate, *rest[i + 1:])
            if stat.S_ISLNK(mode):
                return Path(os.path.realpath(os.path.join(candidate, *rest[i + 1:])))
            current = candidate
        return Path(current)

    def reverse(self, real: Path) -> str:
        if real == self.root:
            return "/"
        if not self.inside(real):
            raise SFTPNoSuchFile("No such file")
        return "/" + real.relative_to(self.root).as_posix()


def _denied(virtual: str, area: Area, op: Op) -> str:
    if area is Area.OUTBOX:
        return f"{virtual}: outbox/ is read-only (you may read, list and delete)"
    if area is Area.ROOT:
        return "/: nothing can be created or changed at the top (upload into inbox/)"
    return f"{virtual}: inbox/ and outbox/ themselves cannot be changed"
