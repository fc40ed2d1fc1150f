"""Limits a partner meets: file size, quota, sparse writes, setstat, handles, sessions, idle time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import asyncssh
import pytest

from feedd.sftp.files import MAX_HANDLES
from tests.sftp.conftest import Feedd


def names(feedd: Feedd) -> list[str]:
    return sorted(p.name for p in (feedd.space() / "inbox").iterdir())


async def test_max_file_size_fails_at_the_crossing_write_and_removes_the_partial(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(demo_extra="max_file_size: 10KiB")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        f = await sftp.open("/inbox/big.csv", "wb")
        await f.write(b"x" * 8192, 0)
        with pytest.raises(asyncssh.SFTPError, match="max_file_size"):
            await f.write(b"x" * 4096, 8192)
        assert names(feedd) == [], "no partial left in the inbox"
        with pytest.raises(asyncssh.SFTPError):
            await f.write(b"y", 0)  # the handle stays refused
        await f.close()
        async with sftp.open("/inbox/fits.csv", "wb") as g:
            await g.write(b"email\nok@x.io\n")
    runs = await feedd.wait_runs(1)
    assert [r.source.name for r in runs] == ["inbox/fits.csv"]


async def test_a_write_far_past_the_end_makes_no_sparse_file(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(demo_extra="max_file_size: 1GiB\n    quota: 2GiB")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        f = await sftp.open("/inbox/sparse.csv", "wb")
        with pytest.raises(asyncssh.SFTPError, match="max_file_size"):
            await f.write(b"x", 2**40)
        await f.close()
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="size"):
            async with sftp.open("/inbox/t.csv.part", "wb") as g:
                await g.write(b"abc")
                await g.truncate(2**40)
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="size"):
            await sftp.truncate("/inbox/t.csv.part", 1)
    assert not (feedd.space() / "inbox" / "sparse.csv").exists()
    assert os.path.getsize(feedd.space() / "inbox" / "t.csv.part") == 3


async def test_quota_counts_the_whole_space(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(demo_extra="quota: 20KiB")
    (feedd.space() / "outbox" / "report.json").write_bytes(b"r" * 4096)  # feedd's own files count too
    await feedd.daemon.stop()
    feedd = await start_feedd(demo_extra="quota: 20KiB")  # usage is measured at start
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/keep.csv.part", "wb") as f:  # a temp name: stays, keeps counting
            await f.write(b"k" * 10240)
        f = await sftp.open("/inbox/second.csv", "wb")
        await f.write(b"s" * 4096)
        with pytest.raises(asyncssh.SFTPError, match="quota exceeded"):
            await f.write(b"s" * 4096, 4096)
        await f.close()
        assert names(feedd) == ["keep.csv.part"], "the crossing upload is removed, earlier files are intact"
        await sftp.remove("/inbox/keep.csv.part")
        async with sftp.open("/inbox/now-fits.csv", "wb") as g:  # deleting freed the quota again
            await g.write(b"email\n" + b"n" * 12000)
    assert [r.source.name for r in await feedd.wait_runs(1)] == ["inbox/now-fits.csv"]


async def test_setstat_keeps_times_and_ignores_mode(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/t.csv.part", "wb") as f:
            await f.write(b"abc")
        await sftp.utime("/inbox/t.csv.part", (1_000_000_000, 1_000_000_000))
        await sftp.chmod("/inbox/t.csv.part", 0o4777)
        attrs = await sftp.stat("/inbox/t.csv.part")
    assert attrs.mtime == 1_000_000_000
    assert (attrs.permissions or 0) & 0o7777 == 0o640, "mode changes are ignored"


async def test_open_handles_per_session_are_capped(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        handles = [await sftp.open(f"/inbox/h{i}.part", "wb") for i in range(MAX_HANDLES)]
        with pytest.raises(asyncssh.SFTPFailure, match="too many open files"):
            await sftp.open("/inbox/one-more.part", "wb")
        for h in handles:
            await h.close()
        async with sftp.open("/inbox/after.part", "wb"):
            pass


async def test_sessions_per_connection_are_capped(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(sftp_extra="max_sessions_per_connection: 2")
    conns = [await feedd.connect() for _ in range(3)]
    clients = [await conns[i].start_sftp_client() for i in range(2)]
    with pytest.raises((asyncssh.Error, OSError, asyncio.IncompleteReadError)):
        third = await conns[2].start_sftp_client()
        await third.listdir("/")
    for c in clients:
        c.exit()
        await c.wait_closed()
    await asyncio.sleep(0.2)
    async with await feedd.connect() as conn, conn.start_sftp_client() as again:  # a slot is free again
        assert "inbox" in await again.listdir("/")
    for c in conns:
        c.close()


async def test_idle_sessions_are_closed(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(sftp_extra="idle_timeout: 500ms")
    conn = await feedd.connect()
    async with conn.start_sftp_client() as sftp:
        assert "inbox" in await sftp.listdir("/")
        await asyncio.wait_for(conn.wait_closed(), 5)


async def test_login_grace_closes_silent_sockets(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(sftp_extra="login_grace: 500ms")
    reader, writer = await asyncio.open_connection("127.0.0.1", feedd.port)
    banner = await reader.readline()
    assert banner.startswith(b"SSH-2.0-feedd")
    # never send our banner: the server hangs up after login_grace
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def _until(check: Callable[[], bool]) -> bool:
    for _ in range(200):  # bounded: ~10 s
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_refused_sessions_leave_no_slot_taken(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(sftp_extra="max_sessions_per_connection: 2")
    sftp_service = feedd.daemon.sftp
    assert sftp_service is not None
    async with await feedd.connect() as conn:
        clients = [await conn.start_sftp_client() for _ in range(2)]
        for _ in range(5):
            with pytest.raises((asyncssh.Error, OSError, asyncio.IncompleteReadError)):
                extra = await conn.start_sftp_client()
                await extra.listdir("/")
        for c in clients:
            c.exit()
            await c.wait_closed()
        # sessions closed before their SFTP handshake give their slot back too
        for _ in range(5):
            chan, _session = await conn.create_session(asyncssh.SSHClientSession, subsystem="sftp", encoding=None)
            chan.close()
            await chan.wait_closed()
        assert await _until(lambda: sftp_service.open_sessions == 0), sftp_service.open_sessions
        again = [await conn.start_sftp_client() for _ in range(2)]
        for c in again:
            assert "inbox" in await c.listdir("/")
            c.exit()
            await c.wait_closed()
    assert await _until(lambda: sftp_service.open_sessions == 0), sftp_service.open_sessions
