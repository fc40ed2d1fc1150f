"""Two feedd nodes on one PostgreSQL store, with one spaces_dir and state_dir, as behind a load balancer: bans
set through one node hold on the other, an unban on either lifts them on both, and a partner's quota is one
quota whichever node the bytes come through."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")

from feedd.config import load_config
from feedd.daemon import Daemon
from tests.helpers import DEMO_HASH, DEMO_PASSWORD, eventually, write
from tests.sftp.conftest import Feedd, demo_key, host_key, render

__all__ = ["demo_key", "host_key"]

STORE = 'store: {type: postgresql, dsn: "${FEEDD_TEST_DSN}"}\n'
HTTP = 'http: {listen: "127.0.0.1:0"}'
OPERATORS = (f'http:\n  listen: "127.0.0.1:0"\n  operators:\n'
             f'    - {{name: admin, password_hash: "{DEMO_HASH}", role: admin}}')
QUOTA = 10_000


@pytest.fixture
async def two_nodes(tmp_path: Path, pg_dsn: str, demo_key: tuple[Path, str],
                    host_key: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start two daemons from one config file (so one state_dir and spaces_dir) on one database. Both
    are started before any upload, and neither processes runs (workers=0): only logins and bytes here."""
    started: list[Daemon] = []

    async def start(demo_extra: str = "") -> tuple[Feedd, Feedd]:
        text = render(demo_key[1], str(host_key), demo_extra=demo_extra).replace(HTTP, OPERATORS)
        # A ban long enough that it cannot run out while the test looks at it.
        text = text.replace("ban: {after_failures: 3, within: 1m, for: 2s}",
                            "ban: {after_failures: 3, within: 1m, for: 10m}") + STORE
        # The other node knows nothing of an upload still open on one node and would take the file once
        # it has not changed for `settle`: that is not what is tested here.
        text = text.replace("settle: 300ms", "settle: 10m")
        path = write(tmp_path, "feedd.yaml", text)
        nodes = []
        for _ in range(2):
            daemon = Daemon(load_config(path, env={"FEEDD_TEST_DSN": pg_dsn}), drain_seconds=2, workers=0)
            await daemon.start()
            started.append(daemon)
            nodes.append(Feedd(daemon, tmp_path, demo_key[0], path))
        return nodes[0], nodes[1]

    yield start
    for daemon in started:
        await daemon.stop()


class Console:
    """An operator's browser on one node's console, from an address of its own (127.0.0.2): the partner's
    address is the one banned."""

    def __init__(self, node: Feedd) -> None:
        assert node.daemon.http is not None
        address = node.daemon.http.addresses[0]
        self.url = f"http://127.0.0.1:{address.port}"
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))

    async def __aenter__(self) -> Console:
        async with self.session.get(f"{self.url}/ui/login") as resp:
            csrf = _csrf(await resp.text())
        async with self.session.post(f"{self.url}/ui/login", allow_redirects=False,
                                     data={"csrf": csrf, "name": "admin", "password": DEMO_PASSWORD}) as resp:
            assert resp.status == 303, await resp.text()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def page(self, path: str) -> str:
        async with self.session.get(f"{self.url}{path}") as resp:
            assert resp.status == 200
            return await resp.text()

    async def banned(self) -> list[str]:
        """The addresses the Connections page lists as banned (each with its unban button)."""
        return re.findall(r'<button type="submit">Unban ([^<]+)</button>', await self.page("/ui/connections"))

    async def unban(self, ip: str) -> None:
        csrf = _csrf(await self.page("/ui/connections"))
        async with self.session.post(f"{self.url}/ui/bans/unban", allow_redirects=False,
                                     data={"csrf": csrf, "ip": ip}) as resp:
            assert resp.status == 303

    async def used(self, connection: str) -> int:
        """The bytes the connection's page says its space uses."""
        found = re.search(r'aria-label="Space used">(\d+)<', await self.page(f"/ui/connections/{connection}"))
        assert found is not None
        return int(found[1])


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found[1]


async def test_bans_set_through_one_node_hold_on_the_other_and_an_unban_on_either_lifts_them(
        two_nodes: Callable[..., Any]) -> None:
    a, b = await two_nodes()
    for _ in range(3):  # wrong passwords through node A: the third gets 127.0.0.1 banned
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
            await a.connect(password="wrong")
    # Through node B, at once, the right password does not get in from that address.
    with pytest.raises((asyncssh.Error, OSError)):
        await b.connect()
    async with Console(b) as console_b, Console(a) as console_a:
        assert await eventually(console_b.banned, what="node B lists the ban") == ["127.0.0.1"]
        assert await console_a.banned() == ["127.0.0.1"]
        with pytest.raises((asyncssh.Error, OSError)):
            await b.connect()  # refused still, now also before the login (B's own copy of the bans)
        with pytest.raises((asyncssh.Error, OSError)):
            await a.connect()

        await console_b.unban("127.0.0.1")  # lifted on B: B lets the partner in at once, and A soon
        assert await console_b.banned() == []
        async with await b.connect() as conn, conn.start_sftp_client() as sftp:
            assert "inbox" in await sftp.listdir("/")
        await eventually(lambda: _none(console_a.banned), what="node A drops the ban")
        async with await a.connect() as conn, conn.start_sftp_client() as sftp:
            assert "inbox" in await sftp.listdir("/")


async def _none(listing: Callable[[], Any]) -> bool:
    return await listing() == []


async def test_a_quota_filled_through_one_node_refuses_a_write_through_the_other(
        two_nodes: Callable[..., Any]) -> None:
    a, b = await two_nodes(demo_extra=f"quota: {QUOTA}")
    # An upload in progress through node A: 9,000 of the 10,000 bytes, its file still open.
    conn_a = await a.connect()
    try:
        sftp_a = await conn_a.start_sftp_client()
        upload = await sftp_a.open("inbox/big.csv", "wb")
        await upload.write(b"x" * 9000)
        async with Console(b) as console_b:
            assert await eventually(lambda: _at_least(console_b, 9000), what="node B counts A's bytes")
        # Through node B, 2,000 more bytes would go over the quota: refused, and the file removed.
        async with await b.connect() as conn_b, conn_b.start_sftp_client() as sftp_b:
            with pytest.raises(asyncssh.SFTPError, match="quota exceeded"):
                async with sftp_b.open("inbox/more.csv", "wb") as f:
                    await f.write(b"y" * 2000)
            assert sorted(await sftp_b.listdir("inbox")) == [".", "..", "big.csv"]
    finally:
        conn_a.abort()  # the upload is left partial: never taken, nothing for the nodes to process


async def _at_least(console: Console, size: int) -> bool:
    return await console.used("demo") >= size
