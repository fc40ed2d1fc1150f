from __future__ import annotations

import asyncio
import threading

import pytest

from tests.sftp.conftest import Feedd


async def test_upload_makes_a_queued_run(feedd: Feedd) -> None:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/inbox/a.csv", "wb") as f:
            await f.write(b"email\na@b.c\n")
    [run] = await feedd.wait_runs(1)
    assert run.status == "queued" and run.source.name == "inbox/a.csv"


async def test_stop_closes_the_store_even_when_stopping_is_interrupted(feedd: Feedd) -> None:
    """Otherwise the store's thread outlives the daemon and the process never exits."""
    daemon = feedd.daemon
    store_threads = [t for t in threading.enumerate() if "_connection_worker" in t.name]
    assert store_threads
    watcher = next(c for c in daemon.components if c.name == "watcher")
    real_stop = watcher.stop

    async def interrupted(deadline: float) -> None:
        raise asyncio.CancelledError  # as when the task stopping the daemon is itself cancelled

    watcher.stop = interrupted  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await daemon.stop()
    watcher.stop = real_stop  # type: ignore[method-assign]
    assert daemon.store is None
    for thread in store_threads:
        thread.join(5)
        assert not thread.is_alive()
