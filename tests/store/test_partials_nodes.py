"""Two feedd nodes on one PostgreSQL store sharing one `state_dir` and `spaces_dir`: a file being uploaded
through one node, or left partial by a node that died, is not taken by the other; completed (through either
node), it becomes exactly one run."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")

from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.model import Run
from tests.helpers import DEMO_PASSWORD, eventually, write
from tests.helpers import Daemon as Serve
from tests.sftp.conftest import Feedd, demo_key, host_key, render
from tests.sftp.logs import capture_logs, events, wait_for, wait_scans

__all__ = ["demo_key", "host_key"]

FIRST, REST = b"email\n" + b"ann@example.org\n" * 500, b"bob@example.org\n" * 500


def _config(tmp_path: Path, name: str, demo_key: tuple[Path, str], host_key: Path, scan_interval: str) -> Path:
    """A node's config: every node's file sits in `tmp_path`, so `./var` (state and spaces) is one folder."""
    text = render(demo_key[1], str(host_key)).replace("settle: 300ms", "settle: 200ms").replace(
        "scan_interval: 1s", f"scan_interval: {scan_interval}")
    return write(tmp_path, f"{name}.yaml", text + 'store: {type: postgresql, dsn: "${FEEDD_TEST_DSN}"}\n')


async def _node(path: Path, pg_dsn: str) -> Daemon:
    daemon = Daemon(load_config(path, env={"FEEDD_TEST_DSN": pg_dsn}), drain_seconds=2, workers=0)
    await daemon.start()
    return daemon


async def _connect(port: int) -> asyncssh.SSHClientConnection:
    return await asyncio.wait_for(asyncssh.connect(
        "127.0.0.1", port, known_hosts=None, username="demo", password=DEMO_PASSWORD, client_keys=None), 20)


async def _one_run(node: Feedd, logs: list[dict[str, Any]]) -> Run:
    """The single run of the drop, once it is recorded and after two more scans of a node that could have
    taken it a second time."""
    [run] = await node.wait_runs(1, within=20)
    await wait_scans(logs, 2)
    assert len(await node.runs()) == 1
    return run


async def test_a_file_being_uploaded_through_one_node_is_not_taken_by_the_other(
        tmp_path: Path, pg_dsn: str, demo_key: tuple[Path, str], host_key: Path) -> None:
    # B scans only at start: what it sees of the upload comes from its file events, after `settle` of quiet,
    # and only the file's mark tells it the upload is in progress on A.
    a = await _node(_config(tmp_path, "a", demo_key, host_key, "1h"), pg_dsn)
    b = await _node(_config(tmp_path, "b", demo_key, host_key, "1h"), pg_dsn)
    try:
        node_a, node_b = (Feedd(d, tmp_path, demo_key[0], tmp_path / "a.yaml") for d in (a, b))
        assert node_a.space() == node_b.space()
        with capture_logs() as logs:
            async with await _connect(node_a.port) as conn, conn.start_sftp_client() as sftp:
                async with sftp.open("inbox/people.csv", "wb") as f:
                    await f.write(FIRST)
                    # the client pauses well beyond `settle`: B looks at the quiet file and leaves it
                    async def looked() -> bool:
                        return any(e.get("file") == "inbox/people.csv" and e.get("reason") == "partial upload"
                                   for e in events(logs, "drop.waiting")) or bool(await node_b.runs())

                    await eventually(looked, what="B looking at the quiet file")
                    assert await node_b.runs() == []
                    assert (node_b.space() / "inbox" / "people.csv").read_bytes() == FIRST
                    await f.write(REST)
            [run] = await node_a.wait_runs(1, within=20)
        assert run.source.size == len(FIRST + REST)
        assert run.source.sha256 == hashlib.sha256(FIRST + REST).hexdigest()
        assert len(await node_b.runs()) == 1
        assert not (node_b.space() / "inbox" / "people.csv").exists()
    finally:
        await b.stop()
        await a.stop()


async def test_a_partial_upload_left_by_a_killed_node_waits_and_is_resumed_through_another(
        tmp_path: Path, pg_dsn: str, demo_key: tuple[Path, str], host_key: Path) -> None:
    b = await _node(_config(tmp_path, "b", demo_key, host_key, "200ms"), pg_dsn)
    a = Serve(_config(tmp_path, "a", demo_key, host_key, "1h"), env={"FEEDD_TEST_DSN": pg_dsn})
    try:
        node_b = Feedd(b, tmp_path, demo_key[0], tmp_path / "b.yaml")
        port_a = int(a.wait_log("listening", service="sftp")["address"].rsplit(":", 1)[1])
        a.wait_log("ready")
        target = node_b.space() / "inbox" / "people.csv"
        with capture_logs() as logs:
            conn = await _connect(port_a)
            try:
                sftp = await conn.start_sftp_client()
                f = await sftp.open("inbox/people.csv", "wb")
                await f.write(FIRST)  # answered: the bytes are in the file
                a.stop()  # kill -9, mid-upload
            finally:
                conn.abort()
            assert a.proc.returncode is not None and target.read_bytes() == FIRST
            # B scans the quiet file several times (its own watcher and the sweep) and leaves it
            await wait_scans(logs, 3)
            assert await node_b.runs() == []
            assert target.read_bytes() == FIRST

            # the client resumes through B, appending the rest
            async with await _connect(node_b.port) as conn2, conn2.start_sftp_client() as sftp2:
                assert (await sftp2.stat("inbox/people.csv")).size == len(FIRST)
                async with sftp2.open("inbox/people.csv", "ab") as f2:
                    await f2.write(REST)
            run = await _one_run(node_b, logs)
        assert run.source.size == len(FIRST + REST)
        assert run.source.sha256 == hashlib.sha256(FIRST + REST).hexdigest()
        assert not target.exists()
        space = b.spaces.get("demo") if b.spaces is not None else None
        assert space is not None and space.partials() == []
    finally:
        a.stop()
        await b.stop()


async def test_the_sweep_keeps_what_another_node_completed(
        tmp_path: Path, pg_dsn: str, demo_key: tuple[Path, str], host_key: Path) -> None:
    """A partial upload recorded by A, then completed through B (here with a done marker still to come,
    so it stays in the inbox): A's sweep, past `partial_max_age`, leaves it; it is taken once complete."""
    def config(name: str, scan: str) -> Path:
        path = _config(tmp_path, name, demo_key, host_key, scan)
        path.write_text(path.read_text().replace("settle: 200ms", "settle: 200ms\n  partial_max_age: 1s\n"
                                                 '  done_marker: ".done"'))
        return path

    a = await _node(config("a", "200ms"), pg_dsn)
    b = await _node(config("b", "1h"), pg_dsn)
    try:
        node_a, node_b = (Feedd(d, tmp_path, demo_key[0], tmp_path / "a.yaml") for d in (a, b))
        target = node_a.space() / "inbox" / "people.csv"
        with capture_logs() as logs:
            conn = await _connect(node_a.port)
            try:
                sftp = await conn.start_sftp_client()
                f = await sftp.open("inbox/people.csv", "wb")
                await f.write(FIRST)
            finally:
                conn.abort()  # the client vanishes: a partial upload on A
            assert a.spaces is not None
            space_a = a.spaces.get("demo")
            assert space_a is not None
            await wait_for(lambda: space_a.partials() == ["inbox/people.csv"] and not space_a.writers)
            async with await _connect(node_b.port) as conn2, conn2.start_sftp_client() as sftp2:
                async with sftp2.open("inbox/people.csv", "ab") as f2:
                    await f2.write(REST)
            assert "user.feedd.partial" not in os.listxattr(target)  # complete for every node
            old = time.time() - 3600
            os.utime(target, (old, old))  # long past partial_max_age
            await wait_scans(logs, 3)  # A's scans, each with its sweep
            assert not events(logs, "sftp.partial_upload_swept")
            assert target.read_bytes() == FIRST + REST
            (target.parent / "people.csv.done").write_bytes(b"")
            run = await eventually(lambda: _single(node_a), what="the completed file taken")
        assert run.source.size == len(FIRST + REST)
    finally:
        await b.stop()
        await a.stop()


async def _single(node: Feedd) -> Run | None:
    runs = await node.runs()
    assert len(runs) <= 1, runs
    return runs[0] if runs else None
