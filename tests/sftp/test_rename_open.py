"""Renames of files and folders with uploads still open or partial in them: nothing is taken before the
client's own CLOSE, and the CLOSE completes the upload under its new name."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.sftp.conftest import Feedd
from tests.sftp.logs import capture_logs, wait_for, wait_scans

DATA = b"email\n" + b"".join(b"person%06d@example.org\n" % i for i in range(6000))  # ~160 KB
CUT = 30_000


async def assert_taken_whole(feedd: Feedd, name: str) -> None:
    [run] = await feedd.wait_runs(1)
    assert run.source.name == name
    assert run.source.size == len(DATA)
    assert run.source.sha256 == hashlib.sha256(DATA).hexdigest()
    assert Path(run.spool_path).read_bytes() == DATA


async def test_a_folder_renamed_under_an_open_upload_waits_for_its_close(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp, \
            await feedd.connect() as conn2, conn2.start_sftp_client() as other:
        await sftp.makedirs("/inbox/sub/deeper")
        f = await sftp.open("/inbox/sub/deeper/big.csv", "wb")
        g = await sftp.open("/inbox/sub/own.csv", "wb")
        await f.write(DATA[:CUT])
        await g.write(DATA[:CUT])
        await other.rename("/inbox/sub", "/inbox/sub2")  # from another session of the same partner
        await sftp.rename("/inbox/sub2", "/inbox/sub3")  # and from this one
        with capture_logs() as logs:
            await wait_scans(logs, 2)  # past the close grace, `settle` and the scans
        assert await feedd.runs() == []
        await f.write(DATA[CUT:], CUT)
        await f.close()
        await assert_taken_whole(feedd, "inbox/sub3/deeper/big.csv")
        await g.write(DATA[CUT:], CUT)
        await g.close()
    runs = await feedd.wait_runs(2)
    assert sorted(r.source.name for r in runs) == ["inbox/sub3/deeper/big.csv", "inbox/sub3/own.csv"]
    assert {r.source.sha256 for r in runs} == {hashlib.sha256(DATA).hexdigest()}


async def test_a_file_renamed_while_open_is_taken_at_its_close(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        f = await sftp.open("/inbox/first.csv", "wb")
        await f.write(DATA[:CUT])
        await sftp.rename("/inbox/first.csv", "/inbox/second.csv")
        with capture_logs() as logs:
            await wait_scans(logs, 2)
        assert await feedd.runs() == []
        await f.write(DATA[CUT:], CUT)
        await f.close()
    await assert_taken_whole(feedd, "inbox/second.csv")


async def test_a_partial_upload_in_a_renamed_folder_stays_partial_across_a_restart(
        start_feedd: Callable[..., Any]) -> None:
    feedd: Feedd = await start_feedd()
    conn = await feedd.connect()
    sftp = await conn.start_sftp_client()
    await sftp.mkdir("/inbox/sub")
    f = await sftp.open("/inbox/sub/big.csv", "wb")
    await f.write(DATA[:CUT])
    conn.abort()  # the client vanishes mid-upload: a partial upload
    assert feedd.daemon.spaces is not None
    space = feedd.daemon.spaces.get("demo")
    assert space is not None
    await wait_for(lambda: space.partials() == ["inbox/sub/big.csv"] and not space.writers)
    async with await feedd.connect() as conn2, conn2.start_sftp_client() as sftp2:
        await sftp2.rename("/inbox/sub", "/inbox/sub2")
        assert space.partials() == ["inbox/sub2/big.csv"]
        with capture_logs() as logs:
            await wait_scans(logs, 2)
        assert await feedd.runs() == []
    await feedd.daemon.stop()
    feedd = await start_feedd()  # the journal says the new name
    assert feedd.daemon.spaces is not None
    again = feedd.daemon.spaces.get("demo")
    assert again is not None and again.partials() == ["inbox/sub2/big.csv"]
    with capture_logs() as logs:
        await wait_scans(logs, 2)
    assert await feedd.runs() == []
    # the client comes back and finishes it where it now is
    async with await feedd.connect() as conn3, conn3.start_sftp_client() as sftp3:
        async with sftp3.open("/inbox/sub2/big.csv", "ab") as g:
            await g.write(DATA[CUT:])
    await assert_taken_whole(feedd, "inbox/sub2/big.csv")
