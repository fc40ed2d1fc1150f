"""A PostgreSQL server for the benchmarks: Debian's PostgreSQL 15, started in a temp dir as the `postgres`
user (it refuses root), durable as a real deployment would run it (fsync and synchronous_commit on), and
removed afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "feedd"


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """The DSN of an empty database on a new server, for the time of the block."""
    if not (PG_BIN / "initdb").exists():
        raise SystemExit(f"needs PostgreSQL 15 in {PG_BIN} (Debian: apt-get install postgresql)")
    top = Path(tempfile.mkdtemp(prefix="feedd-bench-pg-"))
    top.chmod(0o777)
    data = top / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER),
                       check=True, capture_output=True)
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o",
                                    f"-p {port} -k {top} -c listen_addresses=127.0.0.1", "-l", str(top / "pg.log"),
                                    "-w", "start"), check=True, capture_output=True)
        subprocess.run(_as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER,
                                    "feedd"), check=True, capture_output=True)
        yield f"postgresql://{USER}@127.0.0.1:{port}/feedd"
    finally:
        if data.exists():
            subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"),
                           check=False, capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def count_runs(dsn: str, *statuses: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        if statuses:
            row = conn.execute("SELECT count(*) FROM runs WHERE status = ANY(%s)", (list(statuses),)).fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM runs").fetchone()
    return int(row[0]) if row else 0
