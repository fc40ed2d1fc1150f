"""intake.accept: the one way in. Spooled, hashed, recorded; or put back when it cannot be recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from feedd.config import load_config
from feedd.drops import glob_regex, match_pipeline
from feedd.intake import Input, accept
from feedd.model import RunStatus, SourceKind
from feedd.store.sqlite import SqliteStore
from tests.helpers import MINIMAL, write


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("inbox/*.csv", "inbox/a.csv", True),
    ("inbox/*.csv", "inbox/sub/a.csv", False),
    ("inbox/**/*.csv", "inbox/a.csv", True),
    ("inbox/**/*.csv", "inbox/x/y/a.csv", True),
    ("inbox/*.csv", "inbox/a.csv.part", False),
    ("inbox/data-?.json", "inbox/data-1.json", True),
    ("inbox/[ab].csv", "inbox/[ab].csv", True),
])
def test_globs(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).match(path)) is matches


def test_first_matching_pipeline_in_config_order(tmp_path: Path) -> None:
    text = MINIMAL + "  catch-all:\n    connection: demo\n    schema: contact\n    match: ['inbox/**']\n"
    config = load_config(write(tmp_path, "feedd.yaml", text), env={})
    assert match_pipeline(config, "demo", "inbox/a.csv") == "demo-contacts"
    assert match_pipeline(config, "demo", "inbox/a.txt") == "catch-all"
    assert match_pipeline(config, "acme", "inbox/a.csv") is None


async def test_accept_records_before_returning(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "feedd.yaml", MINIMAL), env={})
    store = await SqliteStore.open(tmp_path / "var" / "feedd.db")
    src = tmp_path / "drop.csv"
    src.write_bytes(b"email\na@b.c\n")
    run = await accept(store, config, Input("demo", SourceKind.SFTP, "inbox/drop.csv", src, "demo-contacts"),
                       pipeline="demo-contacts")
    assert not src.exists()
    assert (await store.get_run(run.run_id)) == run
    assert run.status is RunStatus.QUEUED
    assert run.source.sha256 == hashlib.sha256(b"email\na@b.c\n").hexdigest()
    assert Path(run.spool_path).parent == tmp_path / "var" / "spool"
    await store.close()


async def test_a_run_that_cannot_be_recorded_puts_the_input_back(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "feedd.yaml", MINIMAL), env={})
    store = await SqliteStore.open(tmp_path / "var" / "feedd.db")
    await store.close()  # the database is gone: nothing can be recorded
    src = tmp_path / "drop.csv"
    src.write_bytes(b"email\na@b.c\n")
    with pytest.raises(ValueError, match="no active connection"):
        await accept(store, config, Input("demo", SourceKind.SFTP, "inbox/drop.csv", src, "demo-contacts"),
                     pipeline="demo-contacts", overrides={})
    assert src.read_bytes() == b"email\na@b.c\n", "not accepted, so not taken: the input is where it was"
    assert list((tmp_path / "var" / "spool").iterdir()) == []


async def test_recover_takes_in_spool_files_without_a_run_and_only_those(tmp_path: Path) -> None:
    from feedd import intake
    from feedd.model import new_id
    from feedd.store import RunQuery

    config = load_config(write(tmp_path, "feedd.yaml", MINIMAL), env={})
    store = await SqliteStore.open(tmp_path / "var" / "feedd.db")
    try:
        source = tmp_path / "in.csv"
        source.write_text("email\nann@example.org\n")
        kept = await intake.accept(store, config, intake.Input("demo", SourceKind.SFTP, "inbox/in.csv", source, None))
        spool = intake.spool_dir(config)
        orphan = spool / f"{new_id()}.demo.sftp.-.lost.csv"  # moved in, never recorded: a crash in between
        orphan.write_text("email\nbob@example.org\n")
        stranger = spool / f"{new_id()}.nobody.sftp.-.x.csv"
        stranger.write_text("x")
        assert await intake.recover(store, config) == 1
        runs, _ = await store.list_runs(RunQuery(limit=10, oldest_first=True))
        assert runs[0].run_id == kept.run_id and len(runs) == 2
        assert runs[1].source.name == "lost.csv" and runs[1].meta.get("recovered") is True
        assert stranger.exists()  # an unknown connection is left where it is, with a log line
        assert await intake.recover(store, config) == 0  # the second start finds nothing more
    finally:
        await store.close()


async def test_inputs_taken_together_are_made_durable_by_one_filesystem_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import os

    from feedd import durable, intake
    from feedd.store import RunQuery

    assert durable.can_sync_filesystem(), "syncfs(2) is in every Linux libc feedd runs on"
    calls = {"fsync": 0, "syncfs": 0}
    real_fsync, real_syncfs = os.fsync, durable._SYNCFS
    assert real_syncfs is not None

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def syncfs(fd: int) -> int:
        calls["syncfs"] += 1
        return real_syncfs(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable, "_SYNCFS", syncfs)
    config = load_config(write(tmp_path, "feedd.yaml", MINIMAL), env={})
    store = await SqliteStore.open(tmp_path / "var" / "feedd.db")

    def inputs(tag: str, n: int) -> list[Input]:
        out = []
        for i in range(n):
            src = tmp_path / f"{tag}{i}.csv"
            src.write_bytes(f"email\n{tag}{i}@example.org\n".encode())
            out.append(Input("demo", SourceKind.SFTP, f"inbox/{tag}{i}.csv", src, "demo-contacts"))
        return out

    try:
        # One input alone: its own fsync, then its folder's.
        await accept(store, config, inputs("one", 1)[0], pipeline="demo-contacts", overrides={})
        assert calls == {"fsync": 2, "syncfs": 0}

        # Five at once: one journal commit for all of them, and each is recorded with the right hash.
        calls.update(fsync=0, syncfs=0)
        batch = inputs("many", 5)
        runs = await asyncio.gather(*(accept(store, config, item, pipeline="demo-contacts", overrides={})
                                      for item in batch))
        assert calls == {"fsync": 0, "syncfs": 1}
        for i, run in enumerate(runs):
            assert run.source.sha256 == hashlib.sha256(f"email\nmany{i}@example.org\n".encode()).hexdigest()
            assert Path(run.spool_path).is_file()

        # The sync fails with an I/O error, which may be another file's on the same filesystem: each file
        # of the batch is then fsynced on its own. The one whose own fsync fails is not accepted (nothing
        # recorded, its spool file taken in again at the next start); the others are.
        def failing(fd: int) -> int:
            import ctypes
            ctypes.set_errno(5)  # EIO
            return -1

        def fsync_failing_for_bad1(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("bad1.csv"):
                raise OSError(5, "Input/output error")
            fsync(fd)

        monkeypatch.setattr(durable, "_SYNCFS", failing)
        monkeypatch.setattr(durable.os, "fsync", fsync_failing_for_bad1)
        results = await asyncio.gather(*(accept(store, config, item, pipeline="demo-contacts", overrides={})
                                         for item in inputs("bad", 3)), return_exceptions=True)
        assert isinstance(results[1], OSError) and "Input/output error" in str(results[1])
        assert [r.status for r in (results[0], results[2])] == [RunStatus.QUEUED] * 2  # type: ignore[union-attr]
        listed, _ = await store.list_runs(RunQuery(limit=50))
        assert len(listed) == 8
        monkeypatch.setattr(durable, "_SYNCFS", syncfs)
        monkeypatch.setattr(durable.os, "fsync", fsync)
        assert await intake.recover(store, config) == 1
        listed, _ = await store.list_runs(RunQuery(limit=50))
        assert [r.source.name for r in listed if r.meta.get("recovered")] == ["bad1.csv"]

        # Where the system does not allow syncfs (a seccomp filter), files are fsynced one by one, and
        # syncfs is not tried again.
        def refused(fd: int) -> int:
            import ctypes
            ctypes.set_errno(1)  # EPERM
            calls["syncfs"] += 1
            return -1

        monkeypatch.setattr(durable, "_SYNCFS", refused)
        calls.update(fsync=0, syncfs=0)
        runs = await asyncio.gather(*(accept(store, config, item, pipeline="demo-contacts", overrides={})
                                      for item in inputs("sandboxed", 3)))
        assert [r.status for r in runs] == [RunStatus.QUEUED] * 3
        assert calls == {"fsync": 4, "syncfs": 1} and not durable.can_sync_filesystem()
    finally:
        await store.close()


async def test_a_batch_asks_the_store_once_and_still_finds_every_duplicate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    config = load_config(write(tmp_path, "feedd.yaml", MINIMAL), env={})
    store = await SqliteStore.open(tmp_path / "var" / "feedd.db")
    asked: list[str] = []
    for name in ("pipeline_overrides", "originals"):
        real = getattr(store, name)

        def counted(*args: object, _real: object = real, _name: str = name) -> object:
            asked.append(_name)
            return _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(store, name, counted)

    def item(name: str, body: str) -> Input:
        src = tmp_path / name
        src.write_text(body)
        return Input("demo", SourceKind.SFTP, f"inbox/{name}", src, "demo-contacts")

    try:
        original = await accept(store, config, item("a.csv", "email\na@example.org\n"), pipeline="demo-contacts")
        asked.clear()
        bodies = {"b.csv": "email\na@example.org\n", "c.csv": "email\nc@example.org\n",
                  "d.csv": "email\nc@example.org\n", "e.csv": "email\ne@example.org\n"}
        runs = await asyncio.gather(*(accept(store, config, item(n, b), pipeline="demo-contacts")
                                      for n, b in bodies.items()))
        assert sorted(asked) == ["originals", "pipeline_overrides"], "one question of each kind for the batch"
        by_name = {r.source.name: r for r in runs}
        assert by_name["inbox/b.csv"].duplicate_of == original.run_id  # the same as an earlier run
        assert by_name["inbox/c.csv"].status is RunStatus.QUEUED
        assert by_name["inbox/d.csv"].duplicate_of == by_name["inbox/c.csv"].run_id  # within the batch
        assert by_name["inbox/d.csv"].error is not None
        assert by_name["inbox/d.csv"].error.code == "duplicate_input"
        assert by_name["inbox/e.csv"].status is RunStatus.QUEUED
    finally:
        await store.close()
