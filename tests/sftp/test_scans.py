"""Reconciliation scans: a file decided on is not offered or logged again until it changes, and the
number of files and folders in an inbox is capped (`sftp.max_entries_per_space`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import asyncssh
import pytest

from tests.sftp.conftest import Feedd
from tests.sftp.logs import capture_logs, events, wait_for, wait_scans

CSV = b"email\nann@example.org\n"


async def test_empty_files_are_taken_once_each_not_at_every_scan(feedd: Feedd) -> None:
    inbox = feedd.space() / "inbox"
    with capture_logs() as logs:
        await wait_scans(logs, 1)
        (inbox / "sub").mkdir()
        for i in range(40):
            (inbox / ("sub" if i % 2 else ".") / f"empty{i:03d}.csv").write_bytes(b"")
        async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/inbox/by-sftp.csv", "wb"):
                pass
        runs = await feedd.wait_runs(41)
        await wait_scans(logs, 3)
    runs = await feedd.runs()
    assert len(runs) == 41 and {r.source.size for r in runs} == {0}
    assert len({r.source.name for r in runs}) == 41 and all(r.duplicate_of is None for r in runs)
    assert sorted(p.name for p in inbox.iterdir()) == ["sub"]
    assert events(logs, "watch.tick_failed") == []


async def test_an_inbox_holds_at_most_max_entries_per_space(start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd(sftp_extra="max_entries_per_space: 5")
    full = re.escape("too many files and folders in inbox/ (at most 5,")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.mkdir("/inbox/a")
        await sftp.mkdir("/inbox/b")
        for name in ("/inbox/a/1.part", "/inbox/a/2.part", "/inbox/b/3.part"):  # temporary names: they stay
            async with sftp.open(name, "wb") as f:
                await f.write(CSV)
        with pytest.raises(asyncssh.SFTPError, match=full):
            async with sftp.open("/inbox/4.csv", "wb") as f:
                await f.write(CSV)
        with pytest.raises(asyncssh.SFTPError, match=full):
            await sftp.mkdir("/inbox/c")
        async with sftp.open("/inbox/a/1.part", "wb") as f:  # an existing file may be written again
            await f.write(CSV + CSV)
        await sftp.remove("/inbox/a/2.part")
        async with sftp.open("/inbox/4.csv", "wb") as f:  # room again
            await f.write(CSV)
        await feedd.wait_runs(1)  # ... and more once it is taken
        await sftp.mkdir("/inbox/c")
        with pytest.raises(asyncssh.SFTPError, match=full):
            await sftp.mkdir("/inbox/e")
        await sftp.rmdir("/inbox/c")  # a folder removed makes room too
        await sftp.mkdir("/inbox/c")
        assert not os.path.exists(feedd.space() / "inbox" / "4.csv")
        # files that arrive by other means count from the next scan on
        with capture_logs() as logs:
            for i in range(3):
                (feedd.space() / "inbox" / "c" / f"{i}.tmp").write_bytes(CSV)
            await wait_scans(logs, 2)
        with pytest.raises(asyncssh.SFTPError, match=full):
            await sftp.mkdir("/inbox/d")


async def test_a_done_marker_copied_in_by_other_means_releases_its_file(start_feedd: Callable[..., Any]) -> None:
    """Markers are usually empty files: one is an offer of its file, never an (empty) input itself."""
    feedd: Feedd = await start_feedd(sftp_extra='done_marker: ".done"')
    inbox = feedd.space() / "inbox"
    (inbox / "x.csv").write_bytes(CSV)
    with capture_logs() as logs:
        await wait_scans(logs, 2)
        assert await feedd.runs() == []
        (inbox / "x.csv.done").write_bytes(b"")
        [run] = await feedd.wait_runs(1)
        assert run.source.name == "inbox/x.csv"
        await wait_for(lambda: not (inbox / "x.csv.done").exists())
        await wait_scans(logs, 2)
    assert [r.source.name for r in await feedd.runs()] == ["inbox/x.csv"], "the marker is no input of its own"
