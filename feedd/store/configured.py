"""The store the config names (`store.type`): opening it, migrating it, and whether it holds a state yet."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from types import ModuleType

from feedd.config import Config
from feedd.config.values import StoreType
from feedd.errors import StartupError
from feedd.store import Store
from feedd.store.sqlite import SqliteStore

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
        store: Store = await _postgresql().PostgresStore.open(_dsn(config))
        return store
    return await SqliteStore.open(sqlite_path(config))


async def state_exists(config: Config) -> bool:
    """Whether feedd has run with this state before (its database exists), for the host keys' check."""
    if config.store.type is StoreType.POSTGRESQL:
        return bool(await _postgresql().holds_state(_dsn(config)))
    return sqlite_path(config).exists()


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
