"""Links planted in a space (an administrator's mistake) never make another partner's or the host's files
this partner's: not through the watcher, not through a partner's rename, not as a hard link."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.sftp.conftest import Feedd
from tests.sftp.logs import capture_logs, events, wait_for, wait_scans

CSV = b"email\nann@example.org\n"
SECRET = b"email\nsecret@elsewhere.org\n"


def plant(feedd: Feedd) -> dict[str, Path]:
    """Files where a link from demo's inbox leads: acme's inbox (acme's own watcher may take it, as
    acme's), a host folder outside every space, and a host file."""
    acme = feedd.space("acme") / "inbox" / "nested"
    acme.mkdir()
    host = feedd.root / "host"
    host.mkdir()
    secrets = {"acme": acme / "acme.csv", "host": host / "host.csv", "file": feedd.root / "host-file.csv"}
    for path in secrets.values():
        path.write_bytes(SECRET)
    return secrets


async def assert_nothing_taken(feedd: Feedd, secrets: dict[str, Path]) -> None:
    """No run of demo's holds a planted file; the host's files are where they were."""
    assert secrets["host"].read_bytes() == SECRET
    assert secrets["file"].read_bytes() == SECRET
    for run in await feedd.runs():
        assert run.connection == "acme" or SECRET not in Path(run.spool_path).read_bytes(), run
        if run.connection == "acme":
            assert run.source.name == "inbox/nested/acme.csv"


def refused(logs: list[dict[str, Any]]) -> list[str]:
    return [e["file"] for e in events(logs, "drop.refused") if e["connection"] == "demo"]


async def demo_runs(feedd: Feedd) -> list[str]:
    return [r.source.name for r in await feedd.runs(connection="demo")]


async def test_the_watcher_never_walks_or_takes_through_links(feedd: Feedd) -> None:
    secrets = plant(feedd)
    inbox = feedd.space() / "inbox"
    with capture_logs() as logs:
        await wait_scans(logs, 1)
        # planted while feedd runs, so that file events see them too, not only the scans
        os.symlink(secrets["acme"].parent, inbox / "to-acme")
        os.symlink(secrets["host"].parent, inbox / "to-host")
        os.symlink(secrets["file"], inbox / "to-file.csv")
        sub = inbox / "sub"
        sub.mkdir()
        os.symlink(secrets["host"].parent, sub / "deeper")
        (sub / "own.csv").write_bytes(CSV)  # a real file beside them is taken as usual
        [run] = await feedd.wait_runs(1, connection="demo")
        assert run.source.name == "inbox/sub/own.csv"
        await wait_scans(logs, 2)
    await assert_nothing_taken(feedd, secrets)
    assert await demo_runs(feedd) == ["inbox/sub/own.csv"]
    assert events(logs, "watch.tick_failed") == []


async def test_a_hard_link_to_a_file_outside_is_never_taken(feedd: Feedd) -> None:
    secrets = plant(feedd)
    inbox = feedd.space() / "inbox"
    with capture_logs() as logs:
        os.link(secrets["file"], inbox / "hard.csv")
        os.mkdir(inbox / "sub")
        os.link(secrets["acme"], inbox / "sub" / "hard-acme.csv")
        await wait_for(lambda: len(refused(logs)) >= 2)
        await wait_scans(logs, 2)
    assert sorted(refused(logs)) == ["inbox/hard.csv", "inbox/sub/hard-acme.csv"]  # each once
    assert await demo_runs(feedd) == []
    await assert_nothing_taken(feedd, secrets)


async def test_a_partner_cannot_rename_a_planted_link(feedd: Feedd) -> None:
    secrets = plant(feedd)
    inbox = feedd.space() / "inbox"
    os.symlink(secrets["acme"].parent, inbox / "to-acme")
    os.symlink(secrets["host"].parent, inbox / "to-host")
    os.symlink(secrets["file"], inbox / "to-file.csv")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        for name in ("to-acme", "to-host", "to-file.csv"):
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="links cannot be renamed"):
                await sftp.rename(f"/inbox/{name}", f"/inbox/{name}-2.csv")
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="links cannot be renamed"):
                await sftp.posix_rename(f"/inbox/{name}", f"/inbox/sub-{name}")
        # a folder with a link in it may be renamed: the link moves along, nothing is taken through it
        await sftp.mkdir("/inbox/batch")
        os.symlink(secrets["acme"].parent, inbox / "batch" / "to-acme")
        os.symlink(secrets["host"].parent, inbox / "batch" / "to-host")
        async with sftp.open("/inbox/batch/own.csv.part", "wb") as f:
            await f.write(CSV)
        await sftp.rename("/inbox/batch/own.csv.part", "/inbox/batch/own.csv")
        await feedd.wait_runs(1, connection="demo")
        await sftp.rename("/inbox/batch", "/inbox/batch2")
        await sftp.rename("/inbox/batch2", "/inbox/to-acme-again")
    with capture_logs() as logs:
        await wait_scans(logs, 2)
    assert await demo_runs(feedd) == ["inbox/batch/own.csv"]
    await assert_nothing_taken(feedd, secrets)
    assert os.path.islink(inbox / "to-acme-again" / "to-acme")


async def test_a_hard_link_is_never_opened_for_writing(feedd: Feedd) -> None:
    """Writing through a planted hard link would change the file it shares its bytes with."""
    secrets = plant(feedd)
    inbox = feedd.space() / "inbox"
    os.link(secrets["file"], inbox / "hard.csv")
    os.link(secrets["acme"], inbox / "hard-acme.csv")
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        for name, mode in (("hard.csv", "wb"), ("hard.csv", "ab"), ("hard-acme.csv", "r+b")):
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="other hard links"):
                await sftp.open(f"/inbox/{name}", mode)
        async with sftp.open("/inbox/own.csv", "wb") as f:  # a file of its own is written as usual
            await f.write(CSV)
    await assert_nothing_taken(feedd, secrets)
    assert secrets["acme"].read_bytes() == SECRET


def test_a_walk_never_enters_a_folder_swapped_for_a_link_while_it_walks(tmp_path: Path) -> None:
    from feedd.spaces import walk

    inbox = tmp_path / "inbox"
    (inbox / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "secret.csv").write_bytes(SECRET)
    os.symlink(outside, inbox / "link")
    seen: list[str] = []
    walking = walk(inbox)
    folder, entries = next(walking)  # inbox listed: `a` is a real folder then
    seen.append(folder)
    assert sorted(e.name for e in entries) == ["a", "link"]
    os.rename(inbox / "a", tmp_path / "a-moved")
    os.symlink(outside, inbox / "a")  # swapped before the walk goes in
    seen += [folder for folder, _ in walking]
    assert seen == [str(inbox)]
    assert [folder for folder, _ in walk(inbox / "link")] == []  # nor from a link given as the top


def test_open_parent_refuses_a_link_at_any_component(tmp_path: Path) -> None:
    from feedd.spaces import open_parent

    root = tmp_path / "space"
    (root / "inbox" / "real").mkdir(parents=True)
    (root / "inbox" / "real" / "f.csv").write_bytes(CSV)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f.csv").write_bytes(SECRET)
    os.symlink(tmp_path / "outside", root / "inbox" / "link")
    fd, name = open_parent(root, "inbox/real/f.csv")
    try:
        assert name == "f.csv" and os.stat(name, dir_fd=fd).st_size == len(CSV)
    finally:
        os.close(fd)
    for rel in ("inbox/link/f.csv", "inbox/real/../link/f.csv", "inbox/../../outside/f.csv"):
        with pytest.raises(OSError, match=r"Not a directory|Too many levels|not a plain path"):
            os.close(open_parent(root, rel)[0])
