"""The store the config names (`store.type`): opening it, migrating it, and whether it holds a state yet."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from feedd.config import Config
from feedd.config.values import StoreType
from feedd.errors import StartupError
from feedd.store import Store
from feedd.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from feedd.store.postgresql import PostgresStore

DB_NAME = "feedd.db"  # SQLite's file in state_dir


def sqlite_path(config: Config) -> Path:
    return config.state_dir / DB_NAME


def _postgresql() -> ModuleType:
    try:
        from feedd.store import postgresql
    except ImportError as exc:  # psycopg is an extra: a SQLite-only install does not carry it
        raise StartupError(f"store.type postgresql needs psycopg ({exc}): install feedd[postgresql]") from exc
    return postgresql


def _dsn(config: Config) -> str:
    assert config.store.dsn is not None  # the config requires it with type postgresql
    return config.store.dsn


async def open_store(config: Config) -> Store:
    """The configured store, its schema brought up to date."""
    if config.store.type is StoreType.POSTGRESQL:
        # Typed, not the module's Any: mypy then checks here that PostgresStore is a Store.
        postgres: type[PostgresStore] = _postgresql().PostgresStore
        return await postgres.open(_dsn(config))
    return await SqliteStore.open(sqlite_path(config))


async def state_exists(config: Config) -> bool:
    """Whether feedd has served with this state before, for the host keys' check: SQLite's file exists, or
    a node has recorded its host key in the PostgreSQL store (a schema made by `feedd migrate` alone is not
    enough: the first node then makes the keys)."""
    if config.store.type is StoreType.POSTGRESQL:
        return await _postgresql().recorded_host_key(_dsn(config)) is not None
    return sqlite_path(config).exists()


async def record_host_key(config: Config, fingerprint: str, *, replace: bool = False) -> None:
    """With PostgreSQL, record the host key every node must serve with; StartupError if another one is."""
    if config.store.type is not StoreType.POSTGRESQL:
        return  # one node: its state_dir holds the key and the database together
    postgresql = _postgresql()
    if replace:  # `feedd hostkey --generate`, perhaps before any node has started
        await postgresql.migrate(_dsn(config))
    recorded = await postgresql.record_host_key(_dsn(config), fingerprint, replace=replace)
    if recorded != fingerprint:
        raise StartupError(
            f"this node's host key {fingerprint} is not the one the other nodes of the PostgreSQL store serve "
            f"with ({recorded}): partners would see a changed host key. Give every node the same host keys "
            "(share state_dir, or set sftp.host_keys to the same files), or run `feedd hostkey --generate` to "
            "replace the key on purpose.")


async def migrate(config: Config) -> tuple[int, int]:
    """Create or upgrade the schema now; returns (version before, version after)."""
    if config.store.type is StoreType.POSTGRESQL:
        before, after = await _postgresql().migrate(_dsn(config))
        return int(before), int(after)
    path = sqlite_path(config)
    before = 0
    if path.exists():
        with closing(sqlite3.connect(path)) as conn:
            before = int(conn.execute("PRAGMA user_version").fetchone()[0])
    store = await SqliteStore.open(path)
    try:
        return before, await store.schema_version()
    finally:
        await store.close()
