"""feedd's changes to asyncssh (feedd.sftp.wire): installed when the SFTP server starts, only where
asyncssh's code is the code they were written for, on server connections only; uploads arrive intact with
and without them, and a client that breaks the protocol is cut off with them on."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.channel import SSHClientChannel
from asyncssh.connection import SSHConnection, SSHServerConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE
from asyncssh.logging import SSHLogger
from asyncssh.packet import String, UInt32
from asyncssh.sftp import SFTPServerHandler

from feedd.sftp import wire
from tests.sftp.conftest import Feedd, needs_sftp, openssh_batch
from tests.sftp.logs import capture_logs, events

GCM = "aes128-gcm@openssh.com"


def _fast(on: bool) -> str:
    return f"fast_path: {'true' if on else 'false'}"


@pytest.mark.parametrize("fast_path", [True, False])
async def test_an_asyncssh_upload_arrives_intact_with_and_without_the_fast_path(
        start_feedd: Any, fast_path: bool) -> None:
    feedd: Feedd = await start_feedd(sftp_extra=_fast(fast_path))
    assert (SSHServerConnection.data_received is wire._data_received_by_packet) is fast_path
    data = os.urandom(3 * 1024 * 1024 + 4321)
    async with await feedd.connect(encryption_algs=[GCM]) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/big.csv", "wb") as f:
            await f.write(data)
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


@needs_sftp
@pytest.mark.parametrize("fast_path", [True, False])
async def test_an_openssh_upload_arrives_intact_with_and_without_the_fast_path(
        start_feedd: Any, tmp_path: Path, fast_path: bool) -> None:
    feedd: Feedd = await start_feedd(sftp_extra=_fast(fast_path))
    data = os.urandom(2 * 1024 * 1024 + 999)
    (tmp_path / "big.bin").write_bytes(data)
    result = await asyncio.to_thread(openssh_batch, feedd, "put big.bin /inbox/big.csv\n", tmp_path,
                                     options=("-c", GCM))
    assert result.returncode == 0, result.stderr
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


async def test_the_fixes_stay_on_without_the_fast_path(start_feedd: Any) -> None:
    await start_feedd(sftp_extra=_fast(False))
    assert SFTPServerHandler.run is wire._run_ending_at_eof
    assert SSHServerConnection.pause_writing is wire._pause_writing
    assert "data_received" not in vars(SSHServerConnection)


async def test_a_changed_asyncssh_keeps_its_own_code_and_says_so(
        start_feedd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(wire.FINGERPRINTS, "SSHConnection.data_received", "0" * 64)
    with capture_logs() as logs:
        feedd: Feedd = await start_feedd()
    [skipped] = events(logs, "sftp.fast_path_skipped")
    assert skipped["function"] == "SSHConnection.data_received"
    assert "not the code this change was written for" in skipped["reason"]
    assert "data_received" not in vars(SSHServerConnection)  # asyncssh's own
    assert SSHServerConnection.send_packet is wire._send_packet_without_cbc_padding  # the others are on
    data = os.urandom(1024 * 1024 + 17)
    async with await feedd.connect(encryption_algs=[GCM]) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/a.csv", "wb") as f:
            await f.write(data)
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


async def test_another_asyncssh_release_keeps_its_own_code(start_feedd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncssh, "__version__", "2.25.0")
    with capture_logs() as logs:
        await start_feedd()
    skipped = events(logs, "sftp.fast_path_skipped")
    assert {e["function"] for e in skipped} == {c.name for c in wire.CHANGES}
    assert all("asyncssh 2.25.0" in e["reason"] for e in skipped)
    assert SFTPServerHandler.run is not wire._run_ending_at_eof


async def test_client_connections_stay_stock(feedd: Feedd) -> None:
    """The delivery client is an asyncssh client in the same process: none of the changes reach it."""
    async with await feedd.connect(encryption_algs=[GCM]) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/x.csv", "wb") as f:
            await f.write(os.urandom(200_000))
        assert type(conn.logger) is SSHLogger
        assert type(conn._send_encryption).__name__ == "GCMEncryption"
        assert type(conn._recv_encryption).__name__ == "GCMEncryption"
        assert type(conn).data_received is SSHConnection.data_received


class _Client(asyncssh.SSHClient):
    def __init__(self) -> None:
        self.lost: list[Exception | None] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def _refused(feedd: Feedd, attack: Any, reason: str) -> None:
    """`attack(conn)` on a logged-in connection ends that connection, with `reason` from the server;
    feedd goes on serving others."""
    client = _Client()
    conn = await feedd.connect(encryption_algs=[GCM], client_factory=lambda: client)
    try:
        await attack(conn)
        await asyncio.wait_for(conn.wait_closed(), 20)
    finally:
        conn.close()
    [exc] = client.lost
    assert isinstance(exc, asyncssh.DisconnectError) and reason in exc.reason, exc
    data = os.urandom(300_000)
    async with await feedd.connect(encryption_algs=[GCM]) as conn2, conn2.start_sftp_client() as sftp:
        async with sftp.open("/inbox/after.csv", "wb") as f:
            await f.write(data)
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_tampered_gcm_tag_ends_the_connection(feedd: Feedd) -> None:
    async def attack(conn: asyncssh.SSHClientConnection) -> None:
        real_send = conn._send

        def tampered(data: bytes) -> None:
            real_send(data[:-1] + bytes([data[-1] ^ 1]))  # the last byte of the tag

        conn._send = tampered  # type: ignore[method-assign]
        # big enough to arrive in a read the fast path cuts in pieces
        conn.send_packet(MSG_IGNORE, String(os.urandom(100_000)))

    await _refused(feedd, attack, "MAC verification failed")


async def test_an_oversized_packet_length_ends_the_connection(feedd: Feedd) -> None:
    async def attack(conn: asyncssh.SSHClientConnection) -> None:
        conn._send(UInt32(0x7FFFFFFF) + os.urandom(100_000))  # with GCM the length is sent in the clear

    await _refused(feedd, attack, "Max packet size exceeded")


async def test_data_beyond_the_window_ends_the_connection(feedd: Feedd) -> None:
    async def attack(conn: asyncssh.SSHClientConnection) -> None:
        # A session channel opened and never started: the server holds what arrives on it, and grants
        # no more window, so everything past the first window is beyond what the client may send.
        chan: SSHClientChannel[bytes] = SSHClientChannel(conn, asyncio.get_running_loop(), "strict", None,
                                                         "strict", 2 * 1024 * 1024, 32768)
        await chan._open(b"session")
        window, pktsize = chan._send_window, chan._send_pktsize
        for _ in range(window // pktsize + 2):  # as the client's own channel would not
            conn.send_packet(MSG_CHANNEL_DATA, UInt32(chan._send_chan), String(os.urandom(pktsize)))

    await _refused(feedd, attack, "Window exceeded")
