"""Deep trees: nothing that walks a space may recurse, mkdir and rename cap the depth, and an error in a
scan does not end the watcher's loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from feedd import failpoints
from feedd.inotify import TreeWatch
from feedd.model import RunStatus
from tests.sftp.conftest import Feedd
from tests.sftp.logs import capture_logs, events, wait_for, wait_scans

CSV = b"email\nann@example.org\n"
DEEP = 1000  # past Python's default recursion limit


def make_deep(top: Path, levels: int = DEEP) -> Path:
    """`top/d/d/.../d`, made one folder at a time (os.makedirs recurses)."""
    here = top
    for _ in range(levels):
        here = here / "d"
        os.mkdir(here)
    return here


def remove_deep(top: Path) -> None:
    """Remove a tree of any depth without recursion (shutil.rmtree recurses)."""
    folders: list[str] = []
    pending = [os.fspath(top)]
    while pending:
        folder = pending.pop()
        folders.append(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    os.unlink(entry.path)
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


@pytest.fixture
def flat_after(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with every folder in it removed at the end, whatever happened: pytest removes old
    temporary folders with shutil.rmtree, which a deep tree left behind would break."""
    yield tmp_path
    for child in tmp_path.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_deep(child)


@pytest.fixture
def deep_tree(tmp_path: Path) -> Iterator[Path]:
    """1,000 nested folders in demo's inbox, made on disk before feedd starts (removed at the end)."""
    top = tmp_path / "var" / "spaces" / "demo" / "inbox" / "d"
    top.parent.mkdir(parents=True)
    try:
        os.mkdir(top)
        yield make_deep(top, DEEP - 1)
    finally:
        remove_deep(top)


async def test_a_tree_deeper_than_the_recursion_limit_stops_nothing(start_feedd: Callable[..., Any],
                                                                    deep_tree: Path) -> None:
    assert sys.getrecursionlimit() <= DEEP
    with capture_logs() as logs:
        feedd: Feedd = await start_feedd()
        space = feedd.daemon.spaces.get("demo") if feedd.daemon.spaces else None
        assert space is not None and space.entries == DEEP  # measured: every folder counted
        # the folders weigh nothing; what is counted is the partner's data specs in outbox/
        assert space.measure() == sum(p.stat().st_size for p in (feedd.space() / "outbox").iterdir())
        await wait_scans(logs, 2)
        # a file copied in by other means, in another folder, is still taken
        other = feedd.space() / "inbox" / "other"
        other.mkdir()
        (other / "x.csv").write_bytes(CSV)
        [run] = await feedd.wait_runs(1)
        assert run.source.name == "inbox/other/x.csv" and run.status is RunStatus.QUEUED
        # and so is one at the bottom of the deep tree, found by a scan of its own
        (deep_tree / "deep.csv").write_bytes(CSV)
        runs = await feedd.wait_runs(2)
        assert runs[1].source.name == "inbox/" + "d/" * DEEP + "deep.csv"
    assert events(logs, "watch.tick_failed") == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
async def test_the_tree_watch_follows_a_deep_tree(flat_after: Path) -> None:
    tmp_path = flat_after
    bottom = make_deep(tmp_path)
    got: list[str] = []
    watch = TreeWatch(tmp_path, got.extend, lambda: None)
    assert watch.start()
    try:
        (bottom / "late.csv").write_bytes(CSV)
        moved = tmp_path / "moved"
        os.mkdir(tmp_path / "staging")
        make_deep(tmp_path / "staging", 50)
        os.rename(tmp_path / "staging", moved)  # a deep folder moved in: its folders are watched too
        await asyncio.sleep(0.3)
        (moved / ("d/" * 50) / "in-moved.csv").write_bytes(CSV)
        await wait_for(lambda: len(set(got)) >= 2, within=5)
        assert set(got) == {str(bottom / "late.csv"), str(moved / ("d/" * 50) / "in-moved.csv")}
    finally:
        watch.close()


async def test_mkdir_and_rename_cannot_nest_folders_past_max_folder_depth(feedd: Feedd) -> None:
    deepest = "/inbox" + "".join(f"/x{i}" for i in range(1, 33))
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.makedirs(deepest)  # 32 deep: fine
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="folders nest at most 32 deep below inbox/"):
            await sftp.mkdir(deepest + "/too-deep")
        # the same depth reached by moving a folder with folders in it under a deep one
        await sftp.makedirs("/inbox/y/z")
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="folders nest at most 32 deep"):
            await sftp.rename("/inbox/y", deepest.rsplit("/", 1)[0] + "/y")
        await sftp.rename("/inbox/y", deepest.rsplit("/", 2)[0] + "/y")  # z lands 32 deep: fine
        async with sftp.open(deepest + "/deep.csv", "wb") as f:
            await f.write(CSV)
    [run] = await feedd.wait_runs(1)
    assert run.source.name == deepest.lstrip("/") + "/deep.csv"
    assert not (feedd.space() / deepest.lstrip("/") / "too-deep").exists()


async def test_a_scan_that_fails_does_not_end_the_loop(feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_logs() as logs:
        await wait_scans(logs, 1)
        monkeypatch.setattr(failpoints, "ARMED", "watcher.scan")
        await wait_for(lambda: len(events(logs, "watch.tick_failed")) >= 1)
        [failed, *_] = events(logs, "watch.tick_failed")
        assert "FailpointError: failpoint watcher.scan" in failed["exception"]  # logged with its traceback
        monkeypatch.setattr(failpoints, "ARMED", None)
        (feedd.space() / "inbox" / "after.csv").write_bytes(CSV)
        [run] = await feedd.wait_runs(1)
        assert run.source.name == "inbox/after.csv"
        await wait_scans(logs, 1)  # scans go on too
