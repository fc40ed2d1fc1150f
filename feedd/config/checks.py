"""What `feedd check` warns about in a valid config: things that load fine but will not work when the
service runs (nothing to serve, a folder it cannot write, a library or key file that is missing), and weak SSH
algorithms offered to partners."""

from __future__ import annotations

import getpass
import importlib
import os
from pathlib import Path

from feedd.config.algorithms import weak
from feedd.config.values import Config, DestinationType, StoreType


def warnings(config: Config) -> list[str]:
    out: list[str] = weak(config.sftp.algorithms)
    if not config.connections:
        out.append("no connections: nobody can log in over SFTP and no pipeline can run")
    folders = [("state_dir", config.state_dir), ("sftp.spaces_dir", config.sftp.spaces_dir)]
    s3_pipelines: list[str] = []
    for pipe in config.pipelines.values():
        for i, dest in enumerate(pipe.destinations):
            where = f"pipelines.{pipe.name}.destinations[{i}]"
            if dest.type is DestinationType.DIRECTORY and dest.path is not None:
                folders.append((f"{where}.path", dest.path))
            elif dest.type is DestinationType.S3:
                s3_pipelines.append(pipe.name)
            elif dest.type is DestinationType.SFTP and dest.key_file is not None and not dest.key_file.is_file():
                out.append(f"{where}.key_file: {dest.key_file} does not exist: every delivery will fail")
    for where, folder in folders:
        if (problem := _unwritable(folder)) is not None:
            out.append(f"{where}: {problem}")
    if s3_pipelines and not _importable("aiobotocore.session"):
        out.append(f"s3 destinations ({', '.join(sorted(set(s3_pipelines)))}) need aiobotocore, which is not "
                   "installed: pip install 'feedd[s3]'")
    if config.store.type is StoreType.POSTGRESQL and not (_importable("psycopg") and _importable("psycopg_pool")):
        out.append("store: type postgresql needs psycopg and psycopg-pool, which are not installed: "
                   "pip install 'feedd[postgresql]'")
    return out


def _unwritable(folder: Path) -> str | None:
    """Why the running user cannot write into `folder` (or create it, as feedd does at start), or None.
    The check is for the user running `feedd check`: run it as the service's user (`sudo -u feedd`)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{folder} cannot be created: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = f"{folder}" if existing == folder else f"{folder} cannot be created: {existing}"
        return f"{what} is not writable by {_user()}"
    return None


def _user() -> str:
    try:
        return f"user {getpass.getuser()!r}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


def _importable(module: str) -> bool:
    # imported, not only found: an installed but broken package fails the same way at delivery time
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
