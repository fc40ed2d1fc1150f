"""OpenSSH's `scp` (which speaks SFTP since 9.0) and the size it sets at the end of an upload: a file being
uploaded may be cut down to what was written, never grown, and the quota follows."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.sftp.conftest import Feedd

needs_scp = pytest.mark.skipif(shutil.which("scp") is None, reason="OpenSSH scp client not installed")


def _scp(feedd: Feedd, source: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scp", "-P", str(feedd.port), "-i", str(feedd.key_path), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         str(source), f"demo@127.0.0.1:{target}"],
        capture_output=True, text=True, timeout=60, check=False,
    )


@needs_scp
async def test_openssh_scp_uploads_and_exits_0(feedd: Feedd, tmp_path: Path) -> None:
    data = b"email\n" + b"".join(f"user{i}@example.org\n".encode() for i in range(20000))
    (tmp_path / "people.csv").write_bytes(data)
    result = await asyncio.to_thread(_scp, feedd, tmp_path / "people.csv", "/inbox/")
    assert result.returncode == 0, result.stderr
    [run] = await feedd.wait_runs(1)
    assert run.source.name == "inbox/people.csv"
    assert run.source.sha256 == hashlib.sha256(data).hexdigest()


def _used(feedd: Feedd) -> int:
    assert feedd.daemon.spaces is not None
    space = feedd.daemon.spaces.get("demo")
    assert space is not None
    return space.used


async def test_a_file_being_uploaded_may_be_cut_to_what_was_written_not_grown(start_feedd: Any) -> None:
    feedd: Feedd = await start_feedd(demo_extra="quota: 100KiB")
    part = feedd.space() / "inbox" / "cut.csv.part"
    before = _used(feedd)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/cut.csv.part", "wb") as f:
            await f.write(b"x" * 60_000)
            await f.truncate(60_000)  # what scp does: the size it wrote
            await f.truncate(10_000)
            assert os.path.getsize(part) == 10_000
            assert _used(feedd) == before + 10_000
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="larger than what was written"):
                await f.truncate(10_001)
            # the room given back is there to write again: 10,000 + 80,000 fits in 100 KiB
            await f.write(b"y" * 80_000, 10_000)
            # by path too, while it is open
            await sftp.truncate("/inbox/cut.csv.part", 50_000)
            assert _used(feedd) == before + 50_000
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="larger than what was written"):
                await sftp.truncate("/inbox/cut.csv.part", 50_001)
        assert os.path.getsize(part) == 50_000
        # once closed, the file's size stays as it is (setting the same size changes nothing)
        await sftp.truncate("/inbox/cut.csv.part", 50_000)
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="only while it is being uploaded"):
            await sftp.truncate("/inbox/cut.csv.part", 1)
    assert os.path.getsize(part) == 50_000
    assert _used(feedd) == before + 50_000
