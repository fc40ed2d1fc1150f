"""The SSH receive path as feedd changes it: every cipher it offers carries a big upload intact, and with
AES-GCM each read is handed to the cipher as views into it rather than as copies."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest
from asyncssh.connection import SSHConnection
from asyncssh.stream import SSHServerStreamSession

from feedd.config.algorithms import CIPHERS
from feedd.sftp.files import SpaceSFTPServer
from feedd.sftp.wire import ServerGCMEncryption
from tests.sftp.conftest import Feedd, needs_sftp, openssh_batch


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_every_cipher_carries_a_big_upload_intact(feedd: Feedd, cipher: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)  # not a whole number of packets or of writes
    async with await feedd.connect(encryption_algs=[cipher]) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/big.csv", "wb") as f:
            await f.write(data)
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()
    assert run.source.size == len(data)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_keys_renewed_in_the_middle_of_an_upload_change_nothing(
        feedd: Feedd, cipher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client renews the keys every 512 KiB: new keys take effect between two packets of one read."""
    kexinits: Counter[str] = Counter()
    real = SSHConnection._send_kexinit

    def counting(self: SSHConnection) -> None:
        kexinits["server" if self.is_server() else "client"] += 1
        real(self)

    monkeypatch.setattr(SSHConnection, "_send_kexinit", counting)
    data = os.urandom(6 * 1024 * 1024 + 777)
    async with await feedd.connect(encryption_algs=[cipher], rekey_bytes=512 * 1024) as conn, \
            conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/rekeyed.csv", "wb") as f:
            for at in range(0, len(data), 1 << 20):
                await f.write(data[at:at + (1 << 20)], at)
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()
    assert kexinits["server"] >= 5, kexinits  # the first exchange and at least four renewals


@needs_sftp
async def test_an_openssh_upload_reaches_the_cipher_as_views_of_each_read(
        feedd: Feedd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSH's client sends 32 KiB packets; the server reads up to 256 KiB at a time. Each packet is
    cut out of the read as a view (no copy of everything behind it), the channel's data and the SFTP
    write's data are views into their packets, and the upload arrives intact."""
    given: Counter[str] = Counter()
    real = ServerGCMEncryption.decrypt_packet

    def spy(self: ServerGCMEncryption, seq: int, first: bytes, rest: bytes, header_len: int,
            mac: bytes) -> bytes | None:
        given[type(rest).__name__] += 1
        return real(self, seq, first, rest, header_len, mac)

    monkeypatch.setattr(ServerGCMEncryption, "decrypt_packet", spy)
    received: Counter[str] = Counter()  # what the SFTP session is handed, and what each write is given
    real_received = SSHServerStreamSession.data_received
    real_write = SpaceSFTPServer.write

    def spy_received(self: SSHServerStreamSession[bytes], data: bytes, datatype: int | None) -> None:
        received["channel " + type(data).__name__] += 1
        real_received(self, data, datatype)

    def spy_write(self: SpaceSFTPServer, file_obj: object, offset: int, data: bytes) -> object:
        received["write " + type(data).__name__] += 1
        return real_write(self, file_obj, offset, data)

    monkeypatch.setattr(SSHServerStreamSession, "data_received", spy_received)
    monkeypatch.setattr(SpaceSFTPServer, "write", spy_write)
    data = os.urandom(8 * 1024 * 1024 + 999)
    (tmp_path / "big.bin").write_bytes(data)
    result = await asyncio.to_thread(openssh_batch, feedd, "put big.bin /inbox/big.csv\n", tmp_path,
                                     options=("-c", "aes128-gcm@openssh.com"))
    assert result.returncode == 0, result.stderr
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()
    assert given["memoryview"] >= 64, given  # 8 MiB is about 256 packets
    assert given["memoryview"] > given["bytes"], given
    # and the data is not cut out of each packet again on its way to the file
    assert received["channel memoryview"] >= 200 and received["channel bytes"] == 0, received
    assert received["write memoryview"] >= 32 and received["write bytes"] == 0, received
