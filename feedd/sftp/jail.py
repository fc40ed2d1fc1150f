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
    local: str  # lexical local path (the link itself, if it is one)
    real: str  # where it really is (links resolved), proven inside the space
    area: Area

    @property
    def rel(self) -> str:
        """Path relative to the space root (`inbox/a.csv`), by the lexical name the client used."""
        return self.virtual.lstrip("/")

    @property
    def name(self) -> str:
        return posixpath.basename(self.virtual)


def refuse_hard_link(st: os.stat_result, virtual: str) -> None:
    """Refuse to write to a file with other hard links: its bytes are also reachable by another name,
    maybe outside the space (a link feedd never made: partners cannot make any)."""
    if st.st_nlink > 1:
        raise SFTPPermissionDenied(f"{virtual} has other hard links on the server; it cannot be written "
                                   "(upload under a new name)")


def check_name(name: str) -> None:
    """Refuse names a partner could use to confuse people or tools downstream."""
    if len(name) * 4 > MAX_NAME_BYTES and len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise SFTPInvalidFilename(f"name longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}...")
    if bad := _BAD_CHAR.search(name):
        raise SFTPInvalidFilename(f"name contains a control or invalid character {bad.group()!r}: {name!r}")


class Jail:
    """Paths are strings here, not Path objects: this runs for every request."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self._root = os.fspath(self.root)

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
        return os.path.commonpath([self._root, os.fspath(real)]) == self._root

    def area_of(self, real: str | Path) -> Area:
        real_s = os.fspath(real)
        if real_s == self._root:
            return Area.ROOT
        top, _, below = real_s[len(self._root) + 1:].partition("/")
        if top not in ("inbox", "outbox"):
            raise SFTPNoSuchFile("No such file")
        if not below:
            return Area.TOP
        return Area.INBOX if top == "inbox" else Area.OUTBOX

    def resolve(self, path: bytes, op: Op, *, follow: bool = True) -> Target:
        """Map and authorise. `follow=False` acts on a final link itself (lstat, remove, rename)."""
        virtual = self.virtual(path)
        if virtual == "/":
            if op not in _ALLOWED[Area.ROOT]:
                raise SFTPPermissionDenied(_denied(virtual, Area.ROOT, op))
            return Target(virtual, self._root, self._root, Area.ROOT)
        parts = virtual[1:].split("/")
        parent_real = self._real(parts[:-1])
        if not self.inside(parent_real):
            raise SFTPNoSuchFile("No such file")
        if follow:
            real = self._real(parts[-1:], parent_real)
            if not self.inside(real):
                # a link leading out of the space: as if nothing were there
                raise SFTPNoSuchFile("No such file")
        else:
            real = os.path.join(parent_real, parts[-1])
        try:
            area = self.area_of(real)
        except SFTPNoSuchFile:
            if op is Op.READ:
                raise
            raise SFTPPermissionDenied(f"{virtual}: only inbox/ and outbox/ exist at the top") from None
        if op not in _ALLOWED[area]:
            raise SFTPPermissionDenied(_denied(virtual, area, op))
        return Target(virtual, self._root + virtual, real, area)

    def _real(self, parts: list[str], parent: str | None = None) -> str:
        """`realpath` of root/parts, walking only the components below the root (the root is known real).

        Same answer as os.path.realpath, with a few lstat calls instead of one per component from `/`.
        `parent` is the already resolved real path, when the caller has it, that `parts` are below.
        """
        current = self._root if parent is None else parent
        for i, part in enumerate(parts):
            candidate = os.path.join(current, part)
            try:
                mode = os.lstat(candidate).st_mode
            except OSError:
                # missing from here on: the rest is lexical, as realpath would leave it
                return os.path.join(candidate, *parts[i + 1:])
            if stat.S_ISLNK(mode):
                return os.path.realpath(os.path.join(candidate, *parts[i + 1:]))
            current = candidate
        return current

    def reverse(self, real: str | Path) -> str:
        real_s = os.fspath(real)
        if real_s == self._root:
            return "/"
        if not self.inside(real_s):
            raise SFTPNoSuchFile("No such file")
        return real_s[len(self._root):]


def _denied(virtual: str, area: Area, op: Op) -> str:
    if area is Area.OUTBOX:
        return f"{virtual}: outbox/ is read-only (you may read, list and delete)"
    if area is Area.ROOT:
        return "/: nothing can be created or changed at the top (upload into inbox/)"
    return f"{virtual}: inbox/ and outbox/ themselves cannot be changed"
