"""Destinations on this machine: a `directory`, and a partner's `outbox/`. Files appear whole."""

from __future__ import annotations

from pathlib import Path

from feedd import pgp
from feedd.durable import copy_whole


def place(src: Path, folder: Path, name: str) -> Path:
    """Copy `src` to `folder/name`; a reader never sees half of it."""
    return copy_whole(src, folder / name)


def place_outbox(src: Path, outbox: Path, name: str, seal: pgp.Keys | None) -> Path:
    """Place `src` in a partner's outbox as `name`; with the partner's `encrypt_to` keys (`seal`), encrypted
    to them as `name.pgp`. Either way a whole file appears at once."""
    if seal is None:
        return place(src, outbox, name)
    return pgp.seal(seal, src, outbox / pgp.sealed_name(name))
