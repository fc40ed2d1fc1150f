"""Destinations on this machine: a `directory`, and a partner's `outbox/`. Files appear whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from feedd.durable import fsync_dir


def place(src: Path, folder: Path, name: str) -> Path:
    """Copy `src` to `folder/name` so that a reader never sees half of it (temp, fsync, rename, fsync)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    tmp = folder / f".{name}.feedd-tmp"
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, final)
    fsync_dir(folder)
    return final
