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


async def test_asyncssh_debug_logging_does_no_work_when_off_and_all_of_it_when_on(feedd: Feedd) -> None:
    import logging

    import asyncssh
    from asyncssh.packet import SSHPacketLogger

    from feedd.sftp.wire import ServerSSHLogger

    logger = ServerSSHLogger()  # what a server connection logs with (its client connections keep asyncssh's)

    class Probe(bytes):
        touched = 0

        def __str__(self) -> str:
            Probe.touched += 1
            return "probe"

        def __len__(self) -> int:
            Probe.touched += 1
            return 5

    class Handler(SSHPacketLogger):
        @property
        def logger(self) -> object:
            return logger

    std = logging.getLogger("asyncssh")
    level = std.level
    std.setLevel(logging.INFO)
    try:
        logger.debug1("args %s", [object(), Probe(b"x")])
        Handler().log_received_packet(94, None, Probe(b"x"))
    finally:
        std.setLevel(level)
    assert Probe.touched == 0, "nothing formatted for a log line that is off"

    class Lines(logging.Handler):
        """Attached to asyncssh's own logger: whatever the root logger's handlers are meanwhile."""

        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    handler = Lines()
    asyncssh.set_debug_level(3)
    std.setLevel(logging.DEBUG)
    std.addHandler(handler)
    try:
        async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/inbox/logged.csv", "wb") as f:
                await f.write(b"email\na@b.c\n")
    finally:
        std.removeHandler(handler)
        std.setLevel(level)
        asyncssh.set_debug_level(1)
    lines = handler.lines
    assert any("Received" in line and "bytes" in line for line in lines), lines[:20]
    assert any("Sending" in line or "Sent" in line for line in lines)


async def test_the_server_sends_no_cbc_padding_packets(feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncssh puts an empty SSH_MSG_IGNORE before every encrypted packet, a defence that only CBC
    ciphers need; feedd offers none, so its server leaves them out. Its clients keep them."""
    from asyncssh.connection import SSHConnection
    from asyncssh.constants import MSG_IGNORE

    received = {"client": 0, "server": 0}
    real = SSHConnection._packet_handlers[MSG_IGNORE]

    def counting(conn: SSHConnection, *args: object) -> None:
        received["client" if conn.is_client() else "server"] += 1
        real(conn, *args)

    monkeypatch.setitem(SSHConnection._packet_handlers, MSG_IGNORE, counting)
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        for i in range(5):
            async with sftp.open(f"/inbox/p{i}.csv", "wb") as f:
                await f.write(f"email\np{i}@example.org\n".encode())
    runs = await feedd.wait_runs(5)
    assert sorted(r.source.name for r in runs) == [f"inbox/p{i}.csv" for i in range(5)]
    assert received["client"] == 0
    assert received["server"] >= 15, received  # asyncssh's client still sends its own
