"""The clients partners really use: OpenSSH's `sftp -b` with a key, paramiko with a password."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from tests.sftp.conftest import Feedd, needs_sftp, openssh_batch


@needs_sftp
async def test_openssh_sftp_with_a_key_puts_lists_and_renames(feedd: Feedd, tmp_path: Path) -> None:
    data = b"email\n" + b"".join(f"user{i}@example.org\n".encode() for i in range(5000))
    (tmp_path / "people.csv").write_bytes(data)
    result = await asyncio.to_thread(openssh_batch, feedd, """\
cd inbox
put people.csv
put people.csv later.csv.part
rename later.csv.part later.csv
ls -l
""", tmp_path)
    assert result.returncode == 0, result.stderr
    runs = await feedd.wait_runs(2)
    assert sorted(r.source.name for r in runs) == ["inbox/later.csv", "inbox/people.csv"]
    # both have the same bytes: the second is recorded as a duplicate of the first
    assert {r.source.sha256 for r in runs} == {hashlib.sha256(data).hexdigest()}


@needs_sftp
async def test_openssh_sftp_sees_clear_errors(feedd: Feedd, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"email\n")
    result = await asyncio.to_thread(openssh_batch, feedd, "put x.csv /outbox/x.csv\n", tmp_path)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr or "read-only" in result.stderr
    result = await asyncio.to_thread(openssh_batch, feedd, "-symlink /inbox /inbox/l\nls /\n", tmp_path)
    assert result.returncode == 0 and "inbox" in result.stdout


@needs_sftp
async def test_openssh_sftp_key_of_another_user_is_refused(feedd: Feedd, tmp_path: Path) -> None:
    result = await asyncio.to_thread(openssh_batch, feedd, "ls\n", tmp_path, "acme")
    assert result.returncode != 0 and "Permission denied" in result.stderr


async def test_the_run_records_the_sha256_of_every_byte_however_the_writes_came(feedd: Feedd, tmp_path: Path) -> None:
    """Part of the hash is computed as the bytes stream in (writes queued to the writer thread), part is
    caught up from the file (small writes done at once on the loop), the rest by intake: in order or not,
    the run's sha256 is the file's."""
    big = bytes(range(256)) * (24 * 4096 + 17)  # 24 MiB and a bit, in many parallel 255 KiB writes
    (tmp_path / "big.csv").write_bytes(big)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.put(str(tmp_path / "big.csv"), "/inbox/big.csv", block_size=261120, max_requests=64)
        async with sftp.open("/inbox/backwards.csv", "wb") as f:  # out of order (but no gap: no sparse file)
            await f.write(b"first half\n", 0)
            await f.write(b"second half\n", 11)
            await f.write(b"FIRST", 0)
        async with sftp.open("/inbox/small.csv", "wb") as f:  # written on the loop, hashed by intake
            await f.write(b"email\n")
            await f.write(b"a@example.org\n")
    runs = {r.source.name: r for r in await feedd.wait_runs(3, within=30)}
    assert runs["inbox/big.csv"].source.sha256 == hashlib.sha256(big).hexdigest()
    assert runs["inbox/big.csv"].source.size == len(big)
    assert runs["inbox/backwards.csv"].source.sha256 == hashlib.sha256(b"FIRST half\nsecond half\n").hexdigest()
    assert runs["inbox/small.csv"].source.sha256 == hashlib.sha256(b"email\na@example.org\n").hexdigest()
