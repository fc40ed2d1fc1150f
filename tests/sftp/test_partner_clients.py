"""More of the clients partners upload with, each the real program: lftp, rclone and a Java application on
JSch. Each uploads a CSV; the client must exit 0 and feedd must record the run, processed to its counts.
Also the write packets older rclone sends, byte for byte, for machines without rclone."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.packet import Byte, SSHPacket, String, UInt32, UInt64
from asyncssh.sftp import (
    FX_BAD_MESSAGE,
    FX_OK,
    FXF_CREAT,
    FXF_TRUNC,
    FXF_WRITE,
    FXP_CLOSE,
    FXP_HANDLE,
    FXP_INIT,
    FXP_OPEN,
    FXP_STATUS,
    FXP_VERSION,
    FXP_WRITE,
)

from feedd.model import Counts, Run, RunStatus
from tests.helpers import DEMO_PASSWORD
from tests.sftp.conftest import Feedd

ROWS = 2000
JSCH_JAR = Path("/usr/share/java/jsch.jar")
JSCH_PUT = Path(__file__).parent / "clients" / "JschPut.java"

needs_lftp = pytest.mark.skipif(shutil.which("lftp") is None, reason="lftp not installed (Debian package lftp)")
needs_rclone = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone not installed (Debian package rclone)")
needs_jsch = pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("java") is None or not JSCH_JAR.exists(),
    reason=f"JSch needs javac and java and {JSCH_JAR} (Debian packages default-jdk-headless and libjsch-java)")


def _people(tmp_path: Path, name: str) -> bytes:
    # some tens of KiB: more than one write for every client, rclone's parallel ones included
    data = b"email\n" + b"".join(f"user{i}@example.org\n".encode() for i in range(ROWS))
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # HOME in the test's folder: the clients keep settings and logs there, not in the user's home
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
                          env={**os.environ, "HOME": str(tmp_path)})


async def _processed(feedd: Feedd, count: int) -> list[Run]:
    """The runs once `count` of them are through the pipeline (or whatever there is after ~20 s)."""
    for _ in range(400):  # bounded: ~20 s
        runs = await feedd.runs()
        if len(runs) >= count and all(r.status not in (RunStatus.QUEUED, RunStatus.PROCESSING) for r in runs):
            return runs
        await asyncio.sleep(0.05)
    return await feedd.runs()


def _assert_run(run: Run, name: str, data: bytes) -> None:
    assert (run.source.name, run.status, run.error) == (name, RunStatus.COMPLETED, None)
    assert run.counts == Counts(rows=ROWS, valid=ROWS, invalid=0)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


# lftp speaks SFTP through an ssh it starts, answering its password prompt itself. The test's host key is
# new each run: the ssh it starts neither asks about it nor records it.
LFTP_SSH = ("ssh -a -x -oStrictHostKeyChecking=no -oUserKnownHostsFile=/dev/null -oPubkeyAuthentication=no"
            " -oLogLevel=ERROR")


def _lftp(feedd: Feedd, commands: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = f"set sftp:connect-program '{LFTP_SSH}'; set net:max-retries 1; set net:timeout 20; {commands}; bye"
    return _run(["lftp", "-u", f"demo,{DEMO_PASSWORD}", "-e", script, f"sftp://127.0.0.1:{feedd.port}"], tmp_path)


@needs_lftp
async def test_lftp_uploads_with_a_password_and_exits_0(start_feedd: Callable[..., Any], tmp_path: Path) -> None:
    feedd: Feedd = await start_feedd(workers=1)
    data = _people(tmp_path, "people.csv")
    result = await asyncio.to_thread(_lftp, feedd, "put people.csv -o inbox/lftp.csv", tmp_path)
    assert result.returncode == 0, result.stderr
    [run] = await _processed(feedd, 1)
    _assert_run(run, "inbox/lftp.csv", data)
    # and its exit status says so when feedd refuses an upload
    refused = await asyncio.to_thread(_lftp, feedd, "put people.csv -o outbox/lftp.csv", tmp_path)
    assert refused.returncode != 0 and "read-only" in refused.stderr, refused.stderr


def _rclone(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # a config file of the test's own: rclone must not read or write the user's
    return _run(["rclone", *args, "--config", str(tmp_path / "rclone.conf")], tmp_path)


@needs_rclone
@pytest.mark.parametrize("fast_path", [True, False])
async def test_rclone_copies_with_its_defaults_and_exits_0(
        start_feedd: Callable[..., Any], tmp_path: Path, fast_path: bool) -> None:
    """rclone as it comes: before uploading it tries shell commands (md5sum, sha1sum...) over exec channels,
    which feedd refuses, and after it sets the file's modification time; neither may fail the copy. Before
    1.62 it also sends bytes after the data of its last write (see below)."""
    feedd: Feedd = await start_feedd(workers=1, sftp_extra=f"fast_path: {str(fast_path).lower()}")
    data = _people(tmp_path, "up/rclone.csv")
    obscured = await asyncio.to_thread(_rclone, "obscure", DEMO_PASSWORD, tmp_path=tmp_path)
    assert obscured.returncode == 0, obscured.stderr
    remote = f":sftp,host=127.0.0.1,port={feedd.port},user=demo,pass={obscured.stdout.strip()}:inbox"
    result = await asyncio.to_thread(_rclone, "copy", "-v", "--retries", "1", "--low-level-retries", "1",
                                     str(tmp_path / "up"), remote, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    [run] = await _processed(feedd, 1)
    _assert_run(run, "inbox/rclone.csv", data)


async def _sftp_request(reader: Any, writer: Any, pkttype: int, payload: bytes) -> tuple[int, SSHPacket]:
    """One raw SFTP request on a session; the reply's type and the rest of it (past its request id)."""
    writer.write(UInt32(1 + len(payload)) + Byte(pkttype) + payload)
    size = int.from_bytes(await reader.readexactly(4), "big")
    reply = SSHPacket(await reader.readexactly(size))
    kind = reply.get_byte()
    reply.get_uint32()  # request id (or, for VERSION, the version)
    return kind, reply


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_write_with_bytes_after_its_data_writes_its_data(start_feedd: Any, fast_path: bool) -> None:
    """What rclone before 1.62 sends (pkg/sftp before 1.13.6): the last write of an upload is a packet with
    the rest of the client's buffer after the data. As OpenSSH's sftp-server does, the data is written and
    the rest skipped."""
    feedd: Feedd = await start_feedd(sftp_extra=f"fast_path: {str(fast_path).lower()}")
    data = b"email\nlast@example.org\n"
    async with await feedd.connect() as conn:
        writer, reader, _ = await conn.open_session(subsystem="sftp", encoding=None)
        kind, _ = await _sftp_request(reader, writer, FXP_INIT, UInt32(3))
        assert kind == FXP_VERSION
        kind, reply = await _sftp_request(reader, writer, FXP_OPEN, UInt32(1) + String("/inbox/padded.csv")
                                          + UInt32(FXF_WRITE | FXF_CREAT | FXF_TRUNC) + UInt32(0))
        assert kind == FXP_HANDLE
        handle = reply.get_string()
        kind, reply = await _sftp_request(reader, writer, FXP_WRITE, UInt32(2) + String(handle) + UInt64(0)
                                          + String(data) + b"stale buffer bytes" * 100)
        assert (kind, reply.get_uint32()) == (FXP_STATUS, FX_OK)
        # a packet too short for the data it announces is refused as before, and writes nothing
        short = UInt32(3) + String(handle) + UInt64(len(data)) + UInt32(1000) + b"only this"
        kind, reply = await _sftp_request(reader, writer, FXP_WRITE, short)
        assert (kind, reply.get_uint32()) == (FXP_STATUS, FX_BAD_MESSAGE)
        kind, reply = await _sftp_request(reader, writer, FXP_CLOSE, UInt32(4) + String(handle))
        assert (kind, reply.get_uint32()) == (FXP_STATUS, FX_OK)
        writer.close()
    [run] = await feedd.wait_runs(1)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def jsch_put(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JschPut.java compiled against the system's JSch: the folder of its class."""
    classes = tmp_path_factory.mktemp("jsch")
    result = subprocess.run(["javac", "-cp", str(JSCH_JAR), "-d", str(classes), str(JSCH_PUT)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return classes


@pytest.fixture(scope="session")
def ecdsa_host_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JSch 0.1.5x knows no ed25519 and checks RSA host keys only with SHA-1 `ssh-rsa` (which feedd does not
    offer): a partner on it needs an ECDSA host key next to the ed25519 one."""
    path = tmp_path_factory.mktemp("hostkey") / "ssh_host_ecdsa_key"
    asyncssh.generate_private_key("ecdsa-sha2-nistp256").write_private_key(str(path))
    path.chmod(0o600)
    return path


def _jsch(classes: Path, feedd: Feedd, local: str, remote: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _run(["java", "-cp", f"{JSCH_JAR}:{classes}", "JschPut", "127.0.0.1", str(feedd.port), "demo",
                 DEMO_PASSWORD, local, remote], tmp_path)


@needs_jsch
async def test_jsch_uploads_once_its_key_exchange_is_configured(
        start_feedd: Callable[..., Any], jsch_put: Path, ecdsa_host_key: Path, tmp_path: Path) -> None:
    # JSch 0.1.5x's key exchanges are the NIST curves and SHA-1 ones; its aes128-ctr and hmac-sha2-256 are
    # among feedd's defaults already
    feedd: Feedd = await start_feedd(workers=1, extra_host_keys=(ecdsa_host_key,),
                                     sftp_extra="algorithms: {kex: [curve25519-sha256, ecdh-sha2-nistp256]}")
    data = _people(tmp_path, "people.csv")
    result = await asyncio.to_thread(_jsch, jsch_put, feedd, "people.csv", "/inbox/jsch.csv", tmp_path)
    assert result.returncode == 0, result.stderr
    [run] = await _processed(feedd, 1)
    _assert_run(run, "inbox/jsch.csv", data)


@needs_jsch
async def test_jsch_cannot_connect_with_the_default_algorithms(
        start_feedd: Callable[..., Any], jsch_put: Path, ecdsa_host_key: Path, tmp_path: Path) -> None:
    """The NIST-curve key exchanges are off unless configured, and JSch 0.1.5x has nothing else feedd offers:
    it fails at the key exchange (with a host key it could check), and says so in its exit status."""
    feedd: Feedd = await start_feedd(extra_host_keys=(ecdsa_host_key,))
    _people(tmp_path, "people.csv")
    result = await asyncio.to_thread(_jsch, jsch_put, feedd, "people.csv", "/inbox/jsch.csv", tmp_path)
    assert result.returncode == 1
    assert "Algorithm negotiation fail" in result.stderr, result.stderr
    assert await feedd.runs() == []
