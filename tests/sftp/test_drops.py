"""When a drop is complete, and what happens to it: taken once, into the spool, recorded as a run."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from pathlib import Path

import paramiko

from feedd.model import RunStatus
from tests.helpers import DEMO_PASSWORD, eventually
from tests.sftp.conftest import Feedd

CSV = b"email\nann@example.org\nbob@example.org\n"


async def upload(feedd: Feedd, path: str, data: bytes = CSV, user: str = "demo") -> None:
    async with await feedd.connect(user) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open(path, "wb") as f:
            await f.write(data)


def inbox(feedd: Feedd, name: str = "demo") -> list[str]:
    root = feedd.space(name) / "inbox"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_upload_is_spooled_hashed_and_recorded(feedd: Feedd) -> None:
    await upload(feedd, "/inbox/staff.csv")
    [run] = await feedd.wait_runs(1)
    assert run.status is RunStatus.QUEUED and run.pipeline == "demo-contacts"
    assert run.source.kind == "sftp" and run.source.name == "inbox/staff.csv"
    assert run.source.size == len(CSV) and run.source.sha256 == hashlib.sha256(CSV).hexdigest()
    assert Path(run.spool_path).read_bytes() == CSV
    assert inbox(feedd) == []


async def test_temp_name_is_taken_only_after_rename(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        for temp in ("/inbox/a.csv.part", "/inbox/.hidden.csv", "/inbox/~lock.csv"):
            async with sftp.open(temp, "wb") as f:
                await f.write(CSV)
        await asyncio.sleep(1.5)  # past the close grace, the settle time and a reconciliation scan
        assert await feedd.runs() == []
        await sftp.rename("/inbox/a.csv.part", "/inbox/a.csv")
    [run] = await feedd.wait_runs(1)
    assert run.source.name == "inbox/a.csv" and run.source.sha256 == hashlib.sha256(CSV).hexdigest()
    assert inbox(feedd) == [".hidden.csv", "~lock.csv"]


async def test_a_rename_is_taken_at_once_while_other_files_wait_out_their_grace(feedd: Feedd) -> None:
    """Drops come due on one timer: a rename (due now) must not wait for the file closed before it
    (due after the close grace)."""
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/a.csv.part", "wb") as f:
            await f.write(CSV + b"renamed\n")
        async with sftp.open("/inbox/closed.csv", "wb") as f:
            await f.write(CSV)
        await sftp.rename("/inbox/a.csv.part", "/inbox/a.csv")
    runs = {r.source.name: r for r in await feedd.wait_runs(2)}
    renamed, closed = runs["inbox/a.csv"], runs["inbox/closed.csv"]
    # taken apart, not together once the closed file's grace is over
    assert (closed.created_at - renamed.created_at).total_seconds() > 0.25, (renamed.created_at, closed.created_at)


async def test_a_stream_of_drops_is_taken_in_a_few_batches_and_a_lone_drop_at_once(feedd: Feedd) -> None:
    """Files closed one after another, 0.1 s apart, come due one after another: they are taken together
    every half second (a sync and a transaction each time), not one at a time. A drop after a quiet
    spell is not held back by that."""
    from feedd.drops import CLOSE_GRACE, STREAM_GATHER

    closed: dict[str, float] = {}
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        for i in range(12):
            async with sftp.open(f"/inbox/s{i:02d}.csv", "wb") as f:
                await f.write(CSV + str(i).encode())
            closed[f"inbox/s{i:02d}.csv"] = time.time()
            await asyncio.sleep(0.1)
    runs = await feedd.wait_runs(12)
    assert sorted(r.source.name for r in runs) == sorted(closed)
    created = sorted(r.created_at.timestamp() for r in runs)
    batches = 1 + sum(1 for a, b in itertools.pairwise(created) if b - a > 0.05)
    assert batches <= 5, f"{batches} batches for 12 files closed over 1.2 s: {created}"
    # Right after a batch started, a take that comes due waits for the next one...
    drops = feedd.daemon.drops
    assert drops is not None
    loop = asyncio.get_running_loop()
    last_batch = drops._started
    assert drops.starts_at(last_batch + 0.1) == last_batch + STREAM_GATHER
    # ... but a drop after a quiet spell is taken at its time: held back by a batch window, it would start
    # STREAM_GATHER later than that.
    await asyncio.sleep(STREAM_GATHER)
    due = loop.time() + CLOSE_GRACE
    assert drops.starts_at(due) == due, "a lone drop waits for no batch"
    await upload(feedd, "/inbox/lone.csv")
    assert [r for r in await feedd.wait_runs(13) if r.source.name == "inbox/lone.csv"]


async def test_a_temp_folder_renamed_to_a_final_one_releases_its_files(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.mkdir("/inbox/.batch")
        for i in range(3):
            async with sftp.open(f"/inbox/.batch/f{i}.csv", "wb") as f:
                await f.write(CSV + str(i).encode())
        await asyncio.sleep(1.2)
        assert await feedd.runs() == []
        await sftp.rename("/inbox/.batch", "/inbox/batch")
    runs = await feedd.wait_runs(3)
    assert sorted(r.source.name for r in runs) == [f"inbox/batch/f{i}.csv" for i in range(3)]


async def test_handle_held_open_longer_than_settle_is_one_whole_file(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/slow.csv", "wb") as f:
            await f.write(b"email\n")
            await asyncio.sleep(1.5)  # 5x the settle time, longer than a reconciliation scan
            assert await feedd.runs() == [], "an open upload is never taken"
            await f.write(b"late@example.org\n")
    [run] = await feedd.wait_runs(1)
    assert Path(run.spool_path).read_bytes() == b"email\nlate@example.org\n"


async def test_abrupt_disconnect_keeps_a_partial_that_is_never_taken_and_can_resume(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd()
    conn = await feedd.connect()
    sftp = await conn.start_sftp_client()
    f = await sftp.open("/inbox/big.csv", "wb")
    await f.write(b"email\nfirst@example.org\n")
    conn.abort()  # the client vanishes mid-upload: asyncssh closes the handle for us
    await asyncio.sleep(1.5)
    assert await feedd.runs() == []
    assert inbox(feedd) == ["big.csv"], "kept for resume"
    # a restart does not take it either
    await feedd.daemon.stop()
    feedd = await start_feedd()
    await asyncio.sleep(1.5)
    assert await feedd.runs() == []
    # the client comes back and appends the rest
    async with await feedd.connect() as conn2, conn2.start_sftp_client() as sftp2:
        size = (await sftp2.stat("/inbox/big.csv")).size
        assert size == len(b"email\nfirst@example.org\n")
        async with sftp2.open("/inbox/big.csv", "ab") as f2:
            await f2.write(b"second@example.org\n")
    [run] = await feedd.wait_runs(1)
    assert Path(run.spool_path).read_bytes() == b"email\nfirst@example.org\nsecond@example.org\n"


async def test_partials_are_swept_after_their_max_age(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(sftp_extra="partial_max_age: 1s")
    conn = await feedd.connect()
    sftp = await conn.start_sftp_client()
    f = await sftp.open("/inbox/gone.csv", "wb")
    await f.write(b"email\n")
    conn.abort()
    deadline = time.monotonic() + 10
    while inbox(feedd) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert inbox(feedd) == []
    assert await feedd.runs() == []


async def test_ten_clients_five_files_each_no_loss_no_duplicate(feedd: Feedd) -> None:
    expected = {}

    async def client(n: int) -> None:
        async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
            for i in range(5):
                data = CSV + f"c{n}f{i}@example.org\n".encode() * (n * 50 + i)
                expected[f"inbox/c{n}/f{i}.csv"] = hashlib.sha256(data).hexdigest()
                if i == 0:
                    await sftp.mkdir(f"/inbox/c{n}")
                async with sftp.open(f"/inbox/c{n}/f{i}.csv", "wb") as f:
                    await f.write(data)

    await asyncio.gather(*(client(n) for n in range(10)))
    runs = await feedd.wait_runs(50)
    await asyncio.sleep(0.5)
    runs = await feedd.runs()
    assert len(runs) == 50
    assert {r.source.name: r.source.sha256 for r in runs} == expected
    assert all(r.status is RunStatus.QUEUED for r in runs)
    for r in runs:
        assert hashlib.sha256(Path(r.spool_path).read_bytes()).hexdigest() == r.source.sha256


async def test_a_file_copied_in_locally_is_taken_after_settle(feedd: Feedd) -> None:
    target = feedd.space() / "inbox" / "local.csv"
    with open(target, "wb") as f:
        for i in range(8):  # written in bursts closer together than `settle` (300 ms)
            f.write(f"row{i}@example.org\n".encode())
            f.flush()
            os.utime(target)
            await asyncio.sleep(0.1)
            assert await feedd.runs() == []
    [run] = await feedd.wait_runs(1)
    assert Path(run.spool_path).read_bytes() == b"".join(f"row{i}@example.org\n".encode() for i in range(8))


async def test_files_present_at_start_are_taken(start_feedd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd()
    await feedd.daemon.stop()
    (feedd.space() / "inbox" / "while-down.csv").write_bytes(CSV)
    old = time.time() - 60
    os.utime(feedd.space() / "inbox" / "while-down.csv", (old, old))
    feedd = await start_feedd()
    [run] = await feedd.wait_runs(1, within=5)
    assert run.source.name == "inbox/while-down.csv"


async def test_done_marker(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(sftp_extra='done_marker: ".done"')
    await upload(feedd, "/inbox/x.csv")
    await asyncio.sleep(1.2)
    assert await feedd.runs() == []
    await upload(feedd, "/inbox/x.csv.done", b"")
    [run] = await feedd.wait_runs(1)
    assert run.source.name == "inbox/x.csv"
    await eventually(lambda: inbox(feedd) == [], what="the marker removed with its file")


async def test_empty_files_are_taken_like_any_other(feedd: Feedd) -> None:
    await upload(feedd, "/inbox/empty.csv", b"")
    [run] = await feedd.wait_runs(1)
    assert (run.source.name, run.source.size, run.status) == ("inbox/empty.csv", 0, RunStatus.QUEUED)
    assert inbox(feedd) == []


async def test_same_content_again_is_a_duplicate_and_new_content_a_new_run(feedd: Feedd) -> None:
    await upload(feedd, "/inbox/a.csv")
    await feedd.wait_runs(1)
    await upload(feedd, "/inbox/a-again.csv")
    await upload(feedd, "/inbox/a.csv", CSV + b"new@example.org\n")
    runs = await feedd.wait_runs(3)
    first, again, changed = runs
    assert again.status is RunStatus.FAILED and again.error is not None
    assert again.error.code == "duplicate_input" and again.duplicate_of == first.run_id
    assert changed.status is RunStatus.QUEUED and changed.duplicate_of is None


async def test_unmatched_file_fails_with_no_matching_pipeline_and_stays_spooled(feedd: Feedd) -> None:
    await upload(feedd, "/inbox/notes.txt", b"hello")
    [run] = await feedd.wait_runs(1)
    assert run.status is RunStatus.FAILED and run.pipeline is None
    assert run.error is not None and run.error.code == "no_matching_pipeline"
    assert "inbox/notes.txt" in run.error.message
    assert Path(run.spool_path).read_bytes() == b"hello"


async def test_inactive_pipeline_holds_runs(start_feedd) -> None:  # type: ignore[no-untyped-def]
    feedd: Feedd = await start_feedd(pipeline_extra="active: false")
    await upload(feedd, "/inbox/a.csv")
    [run] = await feedd.wait_runs(1)
    assert run.status is RunStatus.HELD


async def test_paramiko_put_with_confirm_sees_its_file(feedd: Feedd, tmp_path: Path) -> None:
    local = tmp_path / "p.csv"
    local.write_bytes(CSV)

    def put() -> int:
        transport = paramiko.Transport(("127.0.0.1", feedd.port))
        try:
            transport.connect(username="demo", password=DEMO_PASSWORD)
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            attrs = sftp.put(str(local), "/inbox/p.csv", confirm=True)  # stats the file after CLOSE
            return int(attrs.st_size or 0)
        finally:
            transport.close()

    assert await asyncio.to_thread(put) == len(CSV)
    [run] = await feedd.wait_runs(1)
    assert run.source.name == "inbox/p.csv"


async def test_rewrite_during_the_close_grace_is_one_run_of_the_final_bytes(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/r.csv", "wb") as f:
            await f.write(b"email\nold@example.org\n")
        async with sftp.open("/inbox/r.csv", "wb") as f:
            await f.write(b"email\nnew@example.org\n")
    await feedd.wait_runs(1)
    await eventually(lambda: inbox(feedd) == [], what="r.csv taken")  # once taken, no second run can come of it
    [run] = await feedd.runs()
    assert Path(run.spool_path).read_bytes() == b"email\nnew@example.org\n"
    assert run.source.sha256 == hashlib.sha256(b"email\nnew@example.org\n").hexdigest()

