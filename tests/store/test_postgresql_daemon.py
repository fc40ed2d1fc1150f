"""feedd on a PostgreSQL store, end to end: an SFTP file becomes a run there and survives restarts; host keys
are one per database, not one per node; `feedd migrate` makes the schema on demand."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import asyncssh
import pytest

pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")

import psycopg

from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.errors import StartupError
from feedd.model import RunStatus
from feedd.store import RunQuery
from feedd.store import migrations as sqlite_migrations
from feedd.store.postgresql_migrations import MIGRATIONS
from tests.helpers import DEMO_PASSWORD, MINIMAL, run_cli, write
from tests.sftp.conftest import Feedd, demo_key, host_key, render
from tests.sftp.logs import capture_logs, events
from tests.store.conftest import PgCluster

__all__ = ["demo_key", "host_key"]

STORE = 'store: {type: postgresql, dsn: "${FEEDD_TEST_DSN}"}\n'


async def test_a_node_on_postgresql_takes_an_sftp_file_and_restarts_keep_its_run(
        tmp_path: Path, pg_dsn: str, demo_key: tuple[Path, str], host_key: Path) -> None:
    path = write(tmp_path, "feedd.yaml", render(demo_key[1], str(host_key)) + STORE)
    env = {"FEEDD_TEST_DSN": pg_dsn}
    daemon = Daemon(load_config(path, env=env), drain_seconds=2, workers=1)
    await daemon.start()
    try:
        feedd = Feedd(daemon, tmp_path, demo_key[0], path)
        async with await feedd.connect(password=DEMO_PASSWORD) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("inbox/people.csv", "wb") as f:
                await f.write(b"email\nann@example.org\nnot-an-email\n")
        deadline = time.monotonic() + 30
        while True:
            runs = await feedd.runs()
            if (runs and runs[0].status is RunStatus.COMPLETED) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        [run] = runs
        assert run.status is RunStatus.COMPLETED, run
        assert (run.counts.rows, run.counts.valid, run.counts.invalid) == (2, 1, 1)
    finally:
        await daemon.stop()
    assert not (tmp_path / "var" / "feedd.db").exists(), "the state went to SQLite"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT run_id, status FROM runs").fetchall() == [(run.run_id, "completed")]

    for _ in range(2):  # restarted twice: the run is read back, not made again or lost
        again = Daemon(load_config(path, env=env), drain_seconds=2, workers=1)
        await again.start()
        try:
            assert again.store is not None
            runs, _ = await again.store.list_runs(RunQuery())
            assert [(r.run_id, r.status, r.counts) for r in runs] == [(run.run_id, RunStatus.COMPLETED, run.counts)]
        finally:
            await again.stop()


def _node(tmp_path: Path, name: str) -> Path:
    return write(tmp_path / name, "feedd.yaml", MINIMAL + STORE)


async def test_every_node_serves_with_the_host_key_the_first_one_made(tmp_path: Path, pg_dsn: str) -> None:
    env = {"FEEDD_TEST_DSN": pg_dsn}
    first = Daemon(load_config(_node(tmp_path, "a"), env=env), drain_seconds=1, workers=0)
    await first.start()  # a fresh database and state_dir: the key is made
    await first.stop()
    made = tmp_path / "a" / "var" / "host_keys"
    assert (made / "ssh_host_ed25519_key").is_file()

    # A second node whose state_dir does not have the key: refused, not given a key of its own.
    lone = Daemon(load_config(_node(tmp_path, "b"), env=env), drain_seconds=1, workers=0)
    with pytest.raises(StartupError, match="other nodes of the PostgreSQL store"):
        await lone.start()
    assert not (tmp_path / "b" / "var" / "host_keys").exists()

    # One with a key of its own: refused too.
    other = tmp_path / "c" / "var" / "host_keys"
    other.mkdir(parents=True)
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other / "ssh_host_ed25519_key"))
    stranger = Daemon(load_config(_node(tmp_path, "c"), env=env), drain_seconds=1, workers=0)
    with pytest.raises(StartupError, match="is not the one the other nodes"):
        await stranger.start()

    # Given the first node's keys, it starts.
    shutil.copytree(made, tmp_path / "b" / "var" / "host_keys")
    second = Daemon(load_config(_node(tmp_path, "b"), env=env), drain_seconds=1, workers=0)
    await second.start()
    await second.stop()


def test_migrate_makes_the_schema_once_and_the_first_node_still_makes_its_key(tmp_path: Path, pg_dsn: str) -> None:
    cfg = _node(tmp_path, "a")
    env = {"FEEDD_TEST_DSN": pg_dsn}
    latest = MIGRATIONS[-1][0]
    first = run_cli("migrate", "-c", str(cfg), env=env)
    assert first.returncode == 0, first.stderr
    assert f"schema upgraded from version 0 to {latest}" in first.stdout
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    again = run_cli("migrate", "-c", str(cfg), env=env)
    assert again.returncode == 0 and f"schema up to date at version {latest}" in again.stdout
    # A schema made ahead of the first start is not a state whose key is lost.
    keys = run_cli("hostkey", "-c", str(cfg), env=env)
    assert keys.returncode == 0 and "ssh-ed25519" in keys.stdout, keys.stderr


def test_migrate_says_why_it_cannot_reach_the_database(tmp_path: Path, pg_cluster: object) -> None:
    cfg = _node(tmp_path, "a")
    result = run_cli("migrate", "-c", str(cfg), env={"FEEDD_TEST_DSN": "postgresql://feedd@127.0.0.1:1/none"})
    assert result.returncode == 1
    assert "feedd migrate: cannot connect to the PostgreSQL store (store.dsn)" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_on_sqlite_makes_the_database_in_state_dir(tmp_path: Path) -> None:
    cfg = write(tmp_path, "feedd.yaml", MINIMAL)
    result = run_cli("migrate", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert f"schema upgraded from version 0 to {sqlite_migrations.MIGRATIONS[-1][0]}" in result.stdout
    assert (tmp_path / "var" / "feedd.db").is_file()


async def test_a_reload_keeps_the_store_it_started_with(tmp_path: Path, pg_dsn: str, demo_key: tuple[Path, str],
                                                        host_key: Path) -> None:
    path = write(tmp_path, "feedd.yaml", render(demo_key[1], str(host_key)))
    daemon = Daemon(load_config(path, env={}), drain_seconds=1, workers=0)
    await daemon.start()
    try:
        path.write_text(path.read_text() + f'store: {{type: postgresql, dsn: "{pg_dsn}"}}\n')
        with capture_logs() as logs:
            assert await daemon.reload()
        assert events(logs, "store changed: takes effect at the next restart")
        feedd = Feedd(daemon, tmp_path, demo_key[0], path)
        async with await feedd.connect(password=DEMO_PASSWORD) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("inbox/people.csv", "wb") as f:
                await f.write(b"email\nann@example.org\n")
        assert len(await feedd.wait_runs(1)) == 1  # in the SQLite store it was opened with
    finally:
        await daemon.stop()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('runs')").fetchone() == (None,)


async def test_a_node_whose_store_is_gone_still_stops_and_says_the_others_take_over(
        tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str) -> None:
    daemon = Daemon(load_config(_node(tmp_path, "a"), env={"FEEDD_TEST_DSN": pg_dsn}), drain_seconds=1, workers=1)
    await daemon.start()
    pg_cluster.drop_database(pg_dsn)  # its connections are cut; no new one can be made
    with capture_logs() as logs:
        await daemon.stop()
    [failed] = events(logs, "cluster.leave_failed")
    assert failed["action"] == "other nodes take this node's work over after cluster.takeover_after"
