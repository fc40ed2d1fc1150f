"""A full disk under an upload: a clear error, the partial removed, earlier files intact, recovery after."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.sftp.conftest import Feedd


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_disk_full_mid_upload(start_feedd: Callable[..., Any], small_tmpfs: Path) -> None:
    feedd: Feedd = await start_feedd(sftp_extra=f'spaces_dir: "{small_tmpfs}"')
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
