"""Downloads a client cannot turn into the server's memory: READs are clamped to the advertised length,
and a session holds about one reply at a time, however many READs it is sent and however slowly it reads."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh import FXF_READ, SFTPAttrs

from feedd.sftp import wire
from feedd.sftp.files import MAX_READ
from tests.sftp.conftest import Feedd

MiB = 1024 * 1024
BOUND = 200 * MiB  # the daemon's growth in resident memory allowed for the whole test


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _peak_reset() -> int:
    """Restart the peak resident-memory count (VmHWM) from now; the resident memory now, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def _peak() -> int:
    return _status_kib("VmHWM") * 1024


def _big_file(feedd: Feedd, size: int) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    with (feedd.space() / "outbox" / "big.bin").open("wb") as f:
        for _ in range(size // MiB):
            f.write(block)


async def test_a_4_gib_read_gets_at_most_the_advertised_length(feedd: Feedd) -> None:
    _big_file(feedd, 64 * MiB)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        handler = sftp._handler
        assert handler.limits.max_read_len == MAX_READ, "limits@openssh.com says what a READ gets"
        handle = await handler.open(b"/outbox/big.bin", FXF_READ, SFTPAttrs())
        data, _ = await handler.read(handle, 0, 0xFFFFFFFF)
        assert len(data) == MAX_READ
        assert data == (bytes(range(256)) * 1024)[:MAX_READ]

        async def length(at: int) -> int:
            got, _ = await handler.read(handle, at, 0xFFFFFFFF)
            return len(got)  # the reply is dropped here: only the daemon's side is measured

        before = _peak_reset()
        lengths = await asyncio.gather(*(length(i * MiB) for i in range(16)))  # pipelined, each asking 4 GiB
        growth = _peak() - before
        await handler.close(handle)
    print(f"\nREADS 16x4GiB: each reply {MAX_READ} bytes, peak growth {growth / MiB:.1f} MiB")
    assert lengths == [MAX_READ] * 16
    assert growth < BOUND, f"{growth / MiB:.0f} MiB"


class _RawSftp(asyncssh.SSHClientSession[bytes]):
    """SFTP spoken by hand: replies are counted and dropped as they come, so the client holds nothing."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.replies: dict[int, tuple[int, bytes]] = {}  # request id -> packet type, body (DATA: its length)
        self.data_bytes = 0
        self.changed = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.buf += data
        while len(self.buf) >= 4 and len(self.buf) >= 4 + (size := struct.unpack(">I", self.buf[:4])[0]):
            kind = self.buf[4]
            if kind == asyncssh.sftp.FXP_VERSION:
                self.replies[-1] = (kind, b"")
            else:
                (req,) = struct.unpack(">I", self.buf[5:9])
                body = bytes(self.buf[9:4 + size]) if kind != asyncssh.sftp.FXP_DATA else b""
                if kind == asyncssh.sftp.FXP_DATA:
                    self.data_bytes += size - 9  # type, id, length
                self.replies[req] = (kind, body)
            del self.buf[:4 + size]
        self.changed.set()

    async def wait(self, count: int, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while len(self.replies) < count and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.5)
        assert len(self.replies) >= count, f"{len(self.replies)} of {count} replies"


def _packet(kind: int, *parts: bytes) -> bytes:
    body = bytes([kind]) + b"".join(parts)
    return struct.pack(">I", len(body)) + body


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


async def _open_raw(conn: asyncssh.SSHClientConnection, **kw: Any) -> tuple[Any, _RawSftp, bytes]:
    """An SFTP session spoken by hand, with /outbox/big.bin open: the channel, the session, the handle."""
    chan, raw = await conn.create_session(_RawSftp, subsystem="sftp", encoding=None, **kw)
    chan.write(_packet(asyncssh.sftp.FXP_INIT, struct.pack(">I", 3)))
    await raw.wait(1)
    chan.write(_packet(asyncssh.sftp.FXP_OPEN, struct.pack(">I", 0), _string(b"/outbox/big.bin"),
                       struct.pack(">II", FXF_READ, 0)))
    await raw.wait(2)
    kind, body = raw.replies[0]
    assert kind == asyncssh.sftp.FXP_HANDLE, body
    return chan, raw, body[4:]


def _reads(handle: bytes, count: int) -> bytes:
    """`count` READs of MAX_READ bytes at offset 0, with request ids 1 to count."""
    return b"".join(_packet(asyncssh.sftp.FXP_READ, struct.pack(">I", i), _string(handle),
                            struct.pack(">QI", 0, MAX_READ)) for i in range(1, count + 1))


async def test_a_client_that_does_not_read_its_replies_holds_no_memory(feedd: Feedd) -> None:
    """1,200 READs sent at once (300 MiB of replies) by a client that takes nothing back for a while."""
    _big_file(feedd, 4 * MiB)
    count = 1200
    async with await feedd.connect() as conn:
        chan, raw, handle = await _open_raw(conn)
        before = _peak_reset()
        chan.pause_reading()  # the window the client grants fills up, and the server must keep the rest
        chan.write(_reads(handle, count))
        # A round trip on another session of the same connection: by its end the first session has
        # had every READ in hand, and has served all it is going to serve while nobody reads.
        async with conn.start_sftp_client() as other:
            assert "inbox" in await other.listdir("/")
        held = _peak() - before
        chan.resume_reading()
        await raw.wait(count + 2)
        growth = _peak() - before
        chan.close()
    print(f"\nREADS {count} unread: peak growth {held / MiB:.1f} MiB while not reading, "
          f"{growth / MiB:.1f} MiB in all; {raw.data_bytes / MiB:.0f} MiB served")
    assert all(raw.replies[i][0] == asyncssh.sftp.FXP_DATA for i in range(1, count + 1))
    assert raw.data_bytes == count * MAX_READ, "every READ is answered once the client reads"
    assert held < BOUND, f"{held / MiB:.0f} MiB"
    assert growth < BOUND, f"{growth / MiB:.0f} MiB"


async def test_asyncssh_downloads_a_file_whole(feedd: Feedd, tmp_path: Path) -> None:
    """asyncssh's client asks where the file has data (`ranges@asyncssh.com`) before reading it."""
    _big_file(feedd, 8 * MiB)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.get("/outbox/big.bin", str(tmp_path / "copy.bin"))
    assert (tmp_path / "copy.bin").read_bytes() == (feedd.space() / "outbox" / "big.bin").read_bytes()


async def test_a_server_side_copy_copies_the_whole_file(feedd: Feedd) -> None:
    """`copy-data` reads the source in blocks; each block is a READ, clamped like any other."""
    _big_file(feedd, 3 * MiB)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.remote_copy("/outbox/big.bin", "/inbox/copy.bin.part")
    assert (feedd.space() / "inbox" / "copy.bin.part").read_bytes() == \
        (feedd.space() / "outbox" / "big.bin").read_bytes()


async def test_a_client_that_grants_a_huge_window_and_stops_reading_its_socket_holds_no_memory(
        feedd: Feedd) -> None:
    """The client lets the server send 2 GiB on the channel, then reads nothing from its socket: the
    replies pile up in the server's socket buffer unless READs wait for it to drain."""
    _big_file(feedd, 4 * MiB)
    count = 1200
    sftp_service = feedd.daemon.sftp
    assert sftp_service is not None
    async with await feedd.connect() as conn:
        chan, raw, handle = await _open_raw(conn, window=2**31 - 1)
        [gate] = [g for g in sftp_service._gates if g.authenticated]
        assert gate.conn is not None
        server_transport = gate.conn._transport
        before = _peak_reset()
        conn._transport.pause_reading()
        chan.write(_reads(handle, count))
        # Until the session waits for the socket (the READ it serves next is held back) or the server has
        # queued more than the bound: whichever comes first.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiter = wire._drained_waiters.get(gate.conn)
            if (waiter is not None and not waiter.done()) or server_transport.get_write_buffer_size() > BOUND:
                break
            await asyncio.sleep(0.01)
        queued = server_transport.get_write_buffer_size()
        held = _peak() - before
        conn._transport.resume_reading()
        await raw.wait(count + 2)
        chan.close()
    print(f"\nREADS {count} with the socket unread: {queued / MiB:.1f} MiB queued, peak growth {held / MiB:.1f} MiB")
    assert raw.data_bytes == count * MAX_READ, "every READ is answered once the client reads again"
    assert queued < BOUND, f"{queued / MiB:.0f} MiB"
    assert held < BOUND, f"{held / MiB:.0f} MiB"
