"""Destinations on this machine: a `directory`, and a partner's `outbox/`. Files appear whole."""

from __future__ import annotations

from pathlib import Path

from feedd.durable import copy_whole


def place(src: Path, folder: Path, name: str) -> Path:
    """Copy `src` to `folder/name`; a reader never sees half of it."""
    return copy_whole(src, folder / name)
