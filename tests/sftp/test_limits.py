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


def _bytes_on_disk(feedd: Feedd) -> int:
    return sum(os.lstat(os.path.join(folder, name)).st_size
               for area in ("inbox", "outbox") for folder, _dirs, files in os.walk(feedd.space() / area)
               for name in files)


async def test_a_second_handle_that_truncates_gives_no_quota_away(start_feedd) -> None:  # type: ignore[no-untyped-def]
    """One handle writes, a second one opens the same file with O_TRUNC (the quota gets the bytes back),
    the first rewrites them and goes on: the rewrite counts again, so the quota holds."""
    feedd: Feedd = await start_feedd(demo_extra="quota: 200KiB", pipeline_extra="reports: false")
    chunk = b"q" * (150 * 1024)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp, \
            conn.start_sftp_client() as other:
        f = await sftp.open("/inbox/loop.csv.part", "wb")
        await f.write(chunk, 0)
        stored = []
        with pytest.raises(asyncssh.SFTPError, match="quota exceeded"):
            for _ in range(5):  # bounded: without the shared count, every round stores 150 KiB more
                async with other.open("/inbox/loop.csv.part", "wb"):  # FXF_TRUNC: 150 KiB back to the quota
                    pass
                await f.write(chunk, 0)  # the same bytes again, through the first handle
                await f.write(chunk, len(chunk))  # and more
                stored.append(os.path.getsize(feedd.space() / "inbox" / "loop.csv.part"))
        await f.close()
        assert stored == [], stored
        assert _bytes_on_disk(feedd) <= 200 * 1024
        # the record of bytes used is what is on disk: a new upload gets exactly the rest of the quota
        async with sftp.open("/inbox/fits.csv.part", "wb") as g:
            await g.write(b"f" * (200 * 1024))
    space = feedd.daemon.spaces.get("demo")  # type: ignore[union-attr]
    assert space is not None and space.used == _bytes_on_disk(feedd) == 200 * 1024
    assert space.open_files == {}


async def test_handles_of_one_file_share_its_size(start_feedd) -> None:  # type: ignore[no-untyped-def]
    """A handle in append mode writes at the file's real end, whoever wrote last; and once one handle
    crosses the quota, the upload is removed for every handle on it."""
    feedd: Feedd = await start_feedd(demo_extra="quota: 64KiB", pipeline_extra="reports: false")
    path = feedd.space() / "inbox" / "shared.csv.part"
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        a = await sftp.open("/inbox/shared.csv.part", "wb")
        b = await sftp.open("/inbox/shared.csv.part", "ab")
        await a.write(b"a" * 1000, 0)
        await b.write(b"b" * 1000)
        await a.write(b"c" * 10, 0)
        await b.write(b"d" * 10)
        assert path.read_bytes() == b"c" * 10 + b"a" * 990 + b"b" * 1000 + b"d" * 10
        with pytest.raises(asyncssh.SFTPError, match="quota exceeded"):
            await a.write(b"x" * 65536, 2010)
        assert not path.exists()
        with pytest.raises(asyncssh.SFTPError, match="quota exceeded"):
            await b.write(b"y")  # the other handle's upload is gone too
        await a.close()
        await b.close()
    assert not path.exists()
    space = feedd.daemon.spaces.get("demo")  # type: ignore[union-attr]
    assert space is not None and space.used == 0 and space.open_files == {}


async def test_a_write_past_the_end_leaves_no_hole(feedd: Feedd) -> None:
    """No max_file_size and no quota: a write that starts past the file's end is refused all the same,
    and the upload can go on from its real end."""
    path = feedd.space() / "inbox" / "holes.csv.part"
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/holes.csv.part", "wb") as f:
            await f.write(b"abc", 0)
            for offset in (4, 1 << 30, 1 << 40):
                with pytest.raises(asyncssh.SFTPFailure, match="gap after the end of the file"):
                    await f.write(b"x", offset)
            await f.write(b"def", 3)  # at the end: fine
        st = os.stat(path)
    assert path.read_bytes() == b"abcdef"
    assert st.st_blocks * 512 >= st.st_size or st.st_size <= 4096, "not sparse"


class _Client(asyncssh.SSHClient):
    lost: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc


async def test_logged_in_connections_per_partner_are_capped(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(sftp_extra="max_connections_per_connection: 3")
    held = [await feedd.connect() for _ in range(3)]
    for _ in range(3):  # the 4th login is refused, with the reason; again and again
        client = _Client()
        with pytest.raises((asyncssh.Error, OSError)):
            extra = await feedd.connect(client_factory=lambda: client)  # noqa: B023 - used right here
            await asyncio.wait_for(extra.wait_closed(), 10)
            async with extra.start_sftp_client() as sftp:
                await sftp.listdir("/")
        assert isinstance(client.lost, asyncssh.DisconnectError), client.lost
        assert client.lost.code == asyncssh.DISC_TOO_MANY_CONNECTIONS
        assert "too many connections logged in as demo (at most 3)" in client.lost.reason
    async with await feedd.connect("acme") as other, other.start_sftp_client() as sftp:  # per partner
        assert "inbox" in await sftp.listdir("/")
    held[0].close()
    await held[0].wait_closed()
    for _ in range(100):  # bounded: the server sees the close shortly after the client
        try:
            async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
                assert "inbox" in await sftp.listdir("/")
            break
        except (asyncssh.Error, OSError):
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("a closed connection made no room")
    for conn in held[1:]:
        async with conn.start_sftp_client() as sftp:  # the ones let in work all along
            assert "inbox" in await sftp.listdir("/")
        conn.close()


async def test_an_upload_removed_while_open_is_not_given_back_twice(start_feedd) -> None:  # type: ignore[no-untyped-def]
    """The client removes its upload while the handle is open, writes on, and crosses max_file_size: the
    bytes were given back at the remove, so the failure gives nothing more back (nor removes a file that
    has taken the name meanwhile)."""
    # reports off here and above: the data spec feedd keeps in the outbox would take part of the quota filled
    feedd: Feedd = await start_feedd(demo_extra="quota: 200KiB\n    max_file_size: 120KiB",
                                     pipeline_extra="reports: false")
    space = feedd.daemon.spaces.get("demo")  # type: ignore[union-attr]
    assert space is not None
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/keep.csv.part", "wb") as k:
            await k.write(b"k" * 50 * 1024)
        f = await sftp.open("/inbox/x.csv.part", "wb")
        await f.write(b"x" * 100 * 1024, 0)
        await sftp.remove("/inbox/x.csv.part")
        async with sftp.open("/inbox/x.csv.part", "wb") as g:  # a new file under the same name
            await g.write(b"n" * 1024)
        await f.write(b"x" * 10 * 1024, 100 * 1024)
        with pytest.raises(asyncssh.SFTPError, match="max_file_size"):
            await f.write(b"x" * 20 * 1024, 110 * 1024)
        await f.close()
        assert (feedd.space() / "inbox" / "x.csv.part").read_bytes() == b"n" * 1024, "the new file stays"
        assert space.used >= _bytes_on_disk(feedd) == 51 * 1024, "never less than what is on disk"
