"""Connections not yet logged in: idle ones do not lock an address out, bursts get in, deadlines close stragglers."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import asyncssh
import pytest

import feedd.sftp.auth as auth
from tests.sftp.conftest import Feedd

VERSION_LINE = b"SSH-2.0-idle\r\n"


async def idle_socket(port: int, send_version: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A socket that is let in (the server's version line came) and then sends nothing, or only its own
    version line (then the server's key exchange offer came too: the server has read it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-feedd")
    if send_version:
        writer.write(VERSION_LINE)
        assert await asyncio.wait_for(reader.read(1), 10), "the server answers with its key exchange offer"
    return reader, writer


async def key_exchange_offered(reader: asyncio.StreamReader) -> bool:
    """True once the server sent its key exchange offer after its version line; False if it hung up."""
    data = b""
    while len(data.partition(b"\n")[2]) == 0:
        try:
            more = await asyncio.wait_for(reader.read(65536), 10)
        except ConnectionError:
            return False
        if not more:
            return False
        data += more
    return data.startswith(b"SSH-2.0-feedd")  # not the bare disconnect packet a refused one gets


async def closed_by_server(reader: asyncio.StreamReader, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(65536), remaining):
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


async def log_in_and_list(feedd: Feedd) -> list[str]:
    async with await feedd.connect() as conn, conn.start_sftp_client() as sftp:
        return await sftp.listdir("/")


async def test_idle_sockets_from_one_address_do_not_lock_it_out(feedd: Feedd) -> None:
    # What a partner's NAT shows: many sockets from its one address that never log in, more than
    # STARTUPS.start (the silent half does not count as at work).
    idle = [await idle_socket(feedd.port, send_version=i % 2 == 1) for i in range(150)]
    assert "inbox" in await log_in_and_list(feedd)  # from 127.0.0.1 too, at the first try
    for _, writer in idle:
        writer.close()


async def test_when_too_many_are_open_the_oldest_idle_one_makes_room(
        feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_PREAUTH", 20)
    idle = [await idle_socket(feedd.port, send_version=False) for _ in range(30)]
    assert "inbox" in await log_in_and_list(feedd)
    # the oldest made room for the newer ones (and for the login), oldest first
    assert await closed_by_server(idle[0][0])
    assert [await closed_by_server(r, within=0.2) for r, _ in idle[-5:]] == [False] * 5
    for _, writer in idle:
        writer.close()


async def test_idle_sockets_are_closed_at_their_deadlines(feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERSION_TIMEOUT", 0.3)
    monkeypatch.setattr(auth, "KEX_TIMEOUT", 1.0)
    silent, w1 = await idle_socket(feedd.port, send_version=False)
    versioned, w2 = await idle_socket(feedd.port, send_version=True)
    started = time.monotonic()
    assert await closed_by_server(silent), "no version line: closed at VERSION_TIMEOUT"
    assert await closed_by_server(versioned), "no key exchange: closed at KEX_TIMEOUT"
    assert time.monotonic() - started < 9, "well before login_grace (30 s here)"
    w1.close()
    w2.close()
    assert "inbox" in await log_in_and_list(feedd), "a real client is well within both"


async def test_a_burst_of_password_logins_all_get_in_within_three_tries(feedd: Feedd) -> None:
    tries: list[int] = []

    async def log_in() -> None:
        for attempt in range(1, 4):
            try:
                async with await feedd.connect():
                    tries.append(attempt)
                    return
            except (asyncssh.DisconnectError, ConnectionError) as exc:
                if attempt == 3:
                    raise AssertionError("no login in three tries") from exc
                await asyncio.sleep(0.1)

    await asyncio.gather(*(log_in() for _ in range(40)))
    print(f"\nBURST logins=40 first_try={tries.count(1)} second={tries.count(2)} third={tries.count(3)}")
    assert len(tries) == 40


async def test_a_flood_of_connections_at_work_is_levelled_off_at_random(
        feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "STARTUPS", auth.Startups(start=5, rate=0.3, full=10))
    monkeypatch.setattr(auth, "RECOUNT_SECONDS", 0.0)  # counted afresh for each: these come faster than that
    admitted, dropped = [], 0
    for _ in range(40):  # each sends its version line, so it is in key exchange: at work, not idle
        reader, writer = await asyncio.open_connection("127.0.0.1", feedd.port)
        writer.write(VERSION_LINE)
        if await key_exchange_offered(reader):
            admitted.append(writer)
        else:
            dropped += 1
            writer.close()
    print(f"\nFLOOD admitted={len(admitted)} dropped={dropped}")
    # up to `start` always get in; beyond, some do; never more than `full`
    assert 5 <= len(admitted) <= 10 and dropped == 40 - len(admitted)
    for writer in admitted:
        writer.close()


def test_drop_probability_rises_from_rate_at_start_to_one_at_full() -> None:
    startups = auth.Startups(start=10, rate=0.3, full=100)
    assert [startups.drop_probability(n) for n in (0, 9, 10, 55, 100, 150)] == pytest.approx([0, 0, 0.3, 0.65, 1, 1])


@pytest.mark.skipif(sys.platform != "linux", reason="nice per thread is Linux's")
async def test_password_checks_run_below_the_loop_priority(feedd: Feedd) -> None:
    assert "inbox" in await log_in_and_list(feedd)
    nice = {t.native_id: os.getpriority(os.PRIO_PROCESS, t.native_id)
            for t in threading.enumerate() if t.name.startswith("feedd-verify") and t.native_id is not None}
    assert nice, "the password was checked in a verify thread"
    assert set(nice.values()) == {os.getpriority(os.PRIO_PROCESS, 0) + auth.VERIFY_NICE}


async def test_a_login_waiting_for_its_password_check_is_at_work_not_evicted(
        feedd: Feedd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_PREAUTH", 10)
    monkeypatch.setattr(auth, "IDLE_SECONDS", 0.0)  # anything not at work is idle at once
    assert feedd.daemon.sftp is not None
    state = feedd.daemon.sftp._auth
    for _ in range(auth.VERIFY_SLOTS):  # every verify slot taken: the login below waits its turn
        await state.verify_slots.acquire()
    login = asyncio.create_task(log_in_and_list(feedd))
    deadline = time.monotonic() + 10
    while not any(g.phase is auth.Phase.CHECKING for g in state.pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    idle = [await idle_socket(feedd.port, send_version=False) for _ in range(30)]  # each makes the cap evict
    for _ in range(auth.VERIFY_SLOTS):
        state.verify_slots.release()
    assert "inbox" in await login
    assert await closed_by_server(idle[0][0]), "the idle ones made room"
    for _, writer in idle:
        writer.close()
