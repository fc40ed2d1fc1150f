"""The `store` section: SQLite in state_dir by default, PostgreSQL with a DSN (from the environment, usually)."""

from __future__ import annotations

from pathlib import Path

from feedd.config.values import StoreType
from feedd.summary import summarize
from tests.config.test_load import errors, load
from tests.helpers import MINIMAL


def test_sqlite_is_the_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert cfg.store.type is StoreType.SQLITE and cfg.store.dsn is None
    assert load(tmp_path, MINIMAL + "store: {type: sqlite}\n").store.type is StoreType.SQLITE


def test_postgresql_takes_its_dsn_from_the_environment(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL + 'store: {type: postgresql, dsn: "${PG_DSN}"}\n',
               env={"PG_DSN": "postgresql://feedd:secret@db.example.com/feedd"})
    assert cfg.store.type is StoreType.POSTGRESQL
    assert cfg.store.dsn == "postgresql://feedd:secret@db.example.com/feedd"
    summary = summarize(cfg)
    assert "store: postgresql" in summary and "secret" not in summary


def test_store_mistakes_are_located(tmp_path: Path) -> None:
    found = errors(tmp_path, MINIMAL + "store: {type: postgresql}\n")
    assert any(": store: missing required key 'dsn'" in e for e in found), found
    found = errors(tmp_path, MINIMAL + 'store: {type: sqlite, dsn: "postgresql://x/y"}\n')
    assert any(": store.dsn: dsn is only read with type: postgresql" in e for e in found), found
    found = errors(tmp_path, MINIMAL + "store: {type: postgres, dns: x}\n")
    assert any(": store.type: expected one of sqlite, postgresql, got 'postgres'" in e for e in found), found
    assert any(": store.dns: unknown key (did you mean 'dsn'?)" in e for e in found), found
    found = errors(tmp_path, MINIMAL + 'store: {type: postgresql, dsn: "${PG_DSN}"}\n')
    assert any(": store.dsn:" in e and "PG_DSN" in e for e in found), found
