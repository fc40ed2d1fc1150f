"""Partners' spaces on disk: the `inbox/` + `outbox/` layout, bytes used (quota), and upload markers.

An upload marker is a small file under `<state_dir>/partials/<connection>/` that exists while a file is
open for writing through feedd's SFTP server. A clean CLOSE removes it; a client that vanishes, or a
daemon that dies, leaves it behind. Whatever has a marker is a partial upload: never taken, kept so the
client can resume, swept after `sftp.partial_max_age`. Markers cost one create and one unlink per upload
(no fsync): cheap enough for the hot path, and they survive a restart, which memory would not.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from feedd import log
from feedd.config import Config, Connection

AREAS = ("inbox", "outbox")


@dataclass(slots=True)
class Space:
    """One connection's space. Mutable on purpose: usage and open writers change with every upload."""

    name: str
    root: Path
    marker_dir: Path
    quota: int | None = None
    max_file_size: int | None = None
    used: int = 0
    writers: Counter[str] = field(default_factory=Counter)  # rel path -> open write handles
    _partial: set[str] = field(default_factory=set)  # what the marker files say, kept in memory

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _marker(self, rel: str) -> str:
        return os.path.join(self.marker_dir, hashlib.sha1(rel.encode(), usedforsecurity=False).hexdigest())

    def load_markers(self) -> None:
        self._partial = set(self.partials())

    def mark_writing(self, rel: str) -> None:
        self.writers[rel] += 1
        self._mark(rel)

    def _mark(self, rel: str) -> None:
        if rel not in self._partial:
            fd = os.open(self._marker(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, rel.encode())
            finally:
                os.close(fd)
            self._partial.add(rel)

    def done_writing(self, rel: str, *, complete: bool) -> None:
        """One write handle closed. `complete` (a client's own CLOSE) clears the marker."""
        self.writers[rel] -= 1
        if self.writers[rel] <= 0:
            del self.writers[rel]
            if complete:
                self.forget(rel)

    def forget(self, rel: str) -> None:
        """The file is gone (removed, taken, renamed away) or complete: so is its marker."""
        if rel in self._partial:
            self._partial.discard(rel)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._marker(rel))

    def moved(self, old: str, new: str) -> None:
        """A rename: a partial upload stays partial under its new name."""
        if old in self._partial:
            self.forget(old)
            self._mark(new)

    def is_partial(self, rel: str) -> bool:
        return rel in self._partial

    def partials(self) -> dict[str, Path]:
        """rel path -> marker, for every upload left unfinished (read from disk)."""
        out = {}
        for marker in self.marker_dir.iterdir() if self.marker_dir.is_dir() else ():
            try:
                out[marker.read_text()] = marker
            except OSError:
                continue
        return out

    def measure(self) -> int:
        """Recount bytes used (sum of file sizes; no sparse files can be made through feedd)."""
        total = 0
        for area in AREAS:
            for dirpath, _dirs, files in os.walk(self.root / area):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        continue
        self.used = total
        return total


class Spaces:
    """Every connection's space; created at start and on reload, never deleted by feedd."""

    def __init__(self, config: Config) -> None:
        self.spaces_dir = config.sftp.spaces_dir
        self._prefix = os.fspath(self.spaces_dir) + "/"  # events name paths as strings under this
        self.markers_dir = config.state_dir / "partials"
        self._spaces: dict[str, Space] = {}
        self.apply(config)

    def apply(self, config: Config) -> None:
        self.spaces_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        for conn in config.connections.values():
            space = self._spaces.get(conn.name)
            if space is None:
                space = self._create(conn)
                self._spaces[conn.name] = space
            space.quota, space.max_file_size = conn.quota, conn.max_file_size

    def _create(self, conn: Connection) -> Space:
        root = self.spaces_dir / conn.name
        for area in AREAS:
            (root / area).mkdir(parents=True, exist_ok=True, mode=0o750)
        marker_dir = self.markers_dir / conn.name
        marker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        space = Space(conn.name, root.resolve(), marker_dir)
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
