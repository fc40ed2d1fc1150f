"""The in-loop inotify tree watch: what it reports, what it leaves out, and new folders."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from feedd.inotify import TreeWatch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


async def settle(got: list[str], want: int) -> None:
    for _ in range(100):
        if len(set(got)) >= want:
            return
        await asyncio.sleep(0.02)


async def test_reports_closed_created_and_moved_in_files_and_new_folders(tmp_path: Path) -> None:
    root = tmp_path / "spaces"
    (root / "acme" / "inbox").mkdir(parents=True)
    (root / "acme" / "outbox").mkdir()
    got: list[str] = []
    lost: list[bool] = []
    watch = TreeWatch(root, got.extend, lambda: lost.append(True), skip=lambda p: p.endswith("/outbox"))
    assert watch.start()
    try:
        inbox = root / "acme" / "inbox"
        (inbox / "a.csv").write_bytes(b"x\n")  # created, then closed after writing
        elsewhere = tmp_path / "b.csv"
        elsewhere.write_bytes(b"y\n")
        os.rename(elsewhere, inbox / "b.csv")  # moved in
        staged = tmp_path / "batch"
        staged.mkdir()
        (staged / "c.csv").write_bytes(b"z\n")
        os.rename(staged, inbox / "batch")  # a folder moved in: its files are reported
        (root / "acme" / "outbox" / "report.json").write_bytes(b"{}")  # skipped
        await settle(got, 3)
        (inbox / "batch" / "d.csv").write_bytes(b"w\n")  # the new folder is watched too
        await settle(got, 4)
        assert set(got) == {str(inbox / "a.csv"), str(inbox / "b.csv"), str(inbox / "batch" / "c.csv"),
                            str(inbox / "batch" / "d.csv")}
        assert lost == []
    finally:
        watch.close()


async def test_writes_to_a_file_held_open_are_not_events(tmp_path: Path) -> None:
    """Only creation and the close count: an upload's every write would otherwise wake the loop."""
    got: list[str] = []
    watch = TreeWatch(tmp_path, got.extend, lambda: None)
    assert watch.start()
    try:
        with open(tmp_path / "slow.csv", "wb") as f:
            await settle(got, 1)
            got.clear()
            for _ in range(20):
                f.write(b"row\n" * 100)
                f.flush()
            await asyncio.sleep(0.2)
            assert got == []
        await settle(got, 1)
        assert got == [str(tmp_path / "slow.csv")]
    finally:
        watch.close()


async def test_a_stream_of_files_is_read_in_a_few_batches(tmp_path: Path) -> None:
    """A busy inbox wakes the loop about every PAUSE, not twice per file, and nothing is missed."""
    from feedd.inotify import PAUSE

    batches: list[list[str]] = []
    watch = TreeWatch(tmp_path, lambda paths: batches.append(list(paths)), lambda: None)
    assert watch.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(40):  # one file every 5 ms: 80 events over about 0.2 s
            (tmp_path / f"f{i:02d}.csv").write_bytes(b"x\n")
            await asyncio.sleep(0.005)
        took = loop.time() - started
        await asyncio.sleep(PAUSE * 3)
        assert {p for batch in batches for p in batch} == {str(tmp_path / f"f{i:02d}.csv") for i in range(40)}
        assert len(batches) <= took / PAUSE + 3, (len(batches), took)
    finally:
        watch.close()
