"""A full disk under an upload: a clear error, the partial removed, earlier files intact, recovery after."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.sftp.conftest import Feedd


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    mount.mkdir(exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tiny", "1m") as mount:
        yield mount


async def test_disk_full_mid_upload(start_feedd: Callable[..., Any], small_tmpfs: Path) -> None:
    feedd: Feedd = await start_feedd(sftp_extra=f'spaces_dir: "{small_tmpfs}"\n  min_free_space: 0')
    inbox = small_tmpfs / "demo" / "inbox"
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/early.csv.part", "wb") as f:  # a temp name: it stays in the space
            await f.write(b"email\nearly@example.org\n")
        with pytest.raises(asyncssh.SFTPError, match="no space left"):
            async with sftp.open("/inbox/huge.csv", "wb") as f:
                for i in range(40):  # 2.5 MiB into a 1 MiB disk, in writes large enough to be queued
                    await f.write(b"x" * 65536 + b"y" * 1024, i * 66560)
        assert sorted(p.name for p in inbox.iterdir()) == ["early.csv.part"], "the partial is gone"
        assert (inbox / "early.csv.part").read_bytes() == b"email\nearly@example.org\n"
        # space is free again: uploads work, and the file is taken (copied across filesystems to the spool)
        async with sftp.open("/inbox/after.csv", "wb") as f:
            await f.write(b"email\nafter@example.org\n")
    [run] = await feedd.wait_runs(1)
    assert run.source.name == "inbox/after.csv"
    assert Path(run.spool_path).read_bytes() == b"email\nafter@example.org\n"
    with contextlib.suppress(FileNotFoundError):
        assert not (inbox / "after.csv").exists()


async def test_a_low_water_mark_refuses_uploads_before_the_state_disk_fills(
        start_feedd: Callable[..., Any], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "var", "8m") as var:  # the whole state: database, spool, spaces, run outputs
        feedd: Feedd = await start_feedd(workers=1, sftp_extra="min_free_space: 2MiB")
        async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/inbox/first.csv", "wb") as f:
                await f.write(b"email\nfirst@example.org\n")
            [first] = await _finished(feedd, 1)
            records = Path(first.meta["records"]).read_bytes()
            filler = var / "filler"
            free = shutil.disk_usage(var).free
            filler.write_bytes(b"\0" * (free - 1024 * 1024))  # 1 MiB left: under the 2 MiB mark
            with pytest.raises(asyncssh.SFTPError, match="low on disk space") as info:
                async with sftp.open("/inbox/refused.csv", "wb") as f:
                    await f.write(b"email\nrefused@example.org\n")
            # SFTP v3 has no "no space" status: clients see a failure with the reason in its text
            assert info.value.code in (asyncssh.FX_FAILURE, asyncssh.FX_NO_SPACE_ON_FILESYSTEM)
            assert not (var / "spaces" / "demo" / "inbox" / "refused.csv").exists()
            filler.unlink()  # space comes back: nothing to restart, uploads work again
            async with sftp.open("/inbox/second.csv", "wb") as f:
                await f.write(b"email\nsecond@example.org\n")
        runs = await _finished(feedd, 2)
        print(f"\nDISKFULL refused_below_mark=1 runs_after_recovery={len(runs)} earlier_intact=1")
        assert [r.status for r in runs] == ["completed", "completed"]
        assert Path(first.meta["records"]).read_bytes() == records  # the earlier run is intact
        await feedd.daemon.stop()


async def _finished(feedd: Feedd, count: int) -> list[Any]:
    for _ in range(300):  # bounded: ~15 s
        runs = await feedd.runs()
        if len(runs) >= count and all(r.status == "completed" for r in runs):
            return runs
        await asyncio.sleep(0.05)
    raise AssertionError([(r.source.name, r.status) for r in await feedd.runs()])


async def test_an_open_upload_is_refused_once_free_space_drops_under_the_mark(
        start_feedd: Callable[..., Any], tmp_path: Path) -> None:
    """The low-water mark holds for uploads already open, not only at open: writes that grow a file look
    at the free space (every few MiB or half second), and the upload stops there."""
    with tmpfs(tmp_path / "var", "16m") as var:
        feedd: Feedd = await start_feedd(sftp_extra="min_free_space: 4MiB")
        inbox = var / "spaces" / "demo" / "inbox"
        async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open("/inbox/long.csv", "wb")
            await f.write(b"email\n", 0)
            offset = 6
            filler = var / "filler"
            filler.write_bytes(b"\0" * (shutil.disk_usage(var).free - 3 * 1024 * 1024))  # 3 MiB left
            with pytest.raises(asyncssh.SFTPError, match="low on disk space") as info:
                for _ in range(400):  # bounded: ~20 s; each write adds 1 KiB, 400 KiB at most
                    await f.write(b"x" * 1024, offset)
                    offset += 1024
                    await asyncio.sleep(0.05)
            assert info.value.code in (asyncssh.FX_FAILURE, asyncssh.FX_NO_SPACE_ON_FILESYSTEM)
            assert "the upload was removed" in str(info.value)
            assert not (inbox / "long.csv").exists()
            await f.close()
            filler.unlink()
            async with sftp.open("/inbox/after.csv", "wb") as g:  # room again: uploads work
                await g.write(b"email\nafter@example.org\n")
        [run] = await feedd.wait_runs(1)
        assert run.source.name == "inbox/after.csv"
        await feedd.daemon.stop()
