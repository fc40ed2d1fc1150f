"""A real PostgreSQL for the store's tests: one cluster per session, started in a temp dir, and a fresh
database per test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "feedd"


@dataclass
class PgCluster:
    port: int
    made: int = 0

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        self.made += 1
        name = f"t{self.made}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")


def _as_postgres(*argv: str) -> list[str]:
    # PostgreSQL refuses to run as root; as any other user it runs as that user.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}): apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")
    top = Path(tempfile.mkdtemp(prefix="feedd-pg-"))
    top.chmod(0o777)  # the postgres user writes here
    data = top / "data"
    port = _free_port()
    try:
        subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
                                    "--no-sync"), check=True, capture_output=True)
        # fsync off: a test database does not outlive its machine, and the shared cores have better uses.
        options = f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                    str(top / "pg.log"), "-w", "start"), check=True, capture_output=True)
        yield PgCluster(port)
    finally:
        if data.exists():
            subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                           check=False, capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    dsn = pg_cluster.create_database()
    yield dsn
    pg_cluster.drop_database(dsn)
