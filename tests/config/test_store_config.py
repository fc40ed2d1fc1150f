"""The `store` section: SQLite in state_dir by default, PostgreSQL with a DSN (from the environment, usually)."""

from __future__ import annotations

from pathlib import Path

from feedd.config.values import StoreType
from feedd.summary import summarize
from tests.config.test_load import errors, load
from tests.helpers import MINIMAL, run_cli, write


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


def test_postgresql_without_its_driver_is_told_how_to_install_it(tmp_path: Path) -> None:
    config = write(tmp_path, "feedd.yaml", MINIMAL + 'store: {type: postgresql, dsn: "postgresql://db/feedd"}\n')
    assert not [line for line in run_cli("check", "-c", str(config)).stderr.splitlines()
                if line.startswith("warning:")]  # installed here: no warning
    # a folder first on the path where psycopg fails to import, as when it is not installed
    shadow = tmp_path / "shadow" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named psycopg')\n")
    env = {"PYTHONPATH": str(shadow.parent)}
    checked = run_cli("check", "-c", str(config), env=env)
    assert checked.returncode == 0
    assert ("warning: store: type postgresql needs psycopg and psycopg-pool, which are not installed: "
            "pip install 'feedd[postgresql]'") in checked.stderr
    served = run_cli("serve", "-c", str(config), env=env)
    assert served.returncode == 1
    assert "store.type postgresql needs psycopg" in served.stderr and "feedd[postgresql]" in served.stderr
    assert "Traceback" not in served.stderr


def test_cluster_takeover_after_is_a_positive_duration(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL).cluster.takeover_after == 30.0
    assert load(tmp_path, MINIMAL + "cluster: {takeover_after: 2m}\n").cluster.takeover_after == 120.0
    found = errors(tmp_path, MINIMAL + "cluster: {takeover_after: 0s, takeover: 1s}\n")
    assert any(": cluster.takeover_after: expected a duration above 0" in e for e in found), found
    assert any(": cluster.takeover: unknown key (did you mean 'takeover_after'?)" in e for e in found), found
