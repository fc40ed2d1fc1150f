from __future__ import annotations

from tests.sftp.conftest import Feedd


async def test_upload_makes_a_queued_run(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/a.csv", "wb") as f:
            await f.write(b"email\na@b.c\n")
    [run] = await feedd.wait_runs(1)
    assert run.status == "queued" and run.source.name == "inbox/a.csv"
