"""Objects managed over the API on one node are in force on the others at once: a partner created through
node A logs in through node B, a disabled one is refused there, without a restart or a reload."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import asyncssh
import pytest

from feedd.config import load_config
from feedd.daemon import Daemon
from tests.helpers import MINIMAL, eventually, write

KEY = "objects-admin-key-0123456789"
PASSWORD = "globex-secret-password"


async def login(daemon: Daemon) -> bool:
    assert daemon.sftp is not None
    try:
        async with await asyncio.wait_for(asyncssh.connect(
                "127.0.0.1", daemon.sftp.addresses[0].port, username="globex", password=PASSWORD,
                known_hosts=None, client_keys=None), 20) as conn, conn.start_sftp_client() as sftp:
            await sftp.listdir(".")
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError, OSError):
        return False
    return True


async def call(daemon: Daemon, method: str, path: str, body: object = None) -> tuple[int, object]:
    assert daemon.http is not None
    url = f"http://127.0.0.1:{daemon.http.addresses[0].port}{path}"
    async with aiohttp.ClientSession() as s, s.request(method, url, json=body,
                                                       headers={"Authorization": f"Bearer {KEY}"}) as r:
        return r.status, await r.json()


async def test_an_object_changed_through_one_node_is_in_force_on_the_other(tmp_path: Path, pg_dsn: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDD_TEST_DSN", pg_dsn)  # the config is judged again, with the environment, at changes
    # the other node is asked again and again until it lets the partner in: no ban for that
    text = MINIMAL.replace('sftp: {listen: "127.0.0.1:0"}',
                           'sftp: {listen: "127.0.0.1:0", ban: {after_failures: 10000, within: 1m, for: 1s}}')
    text = text.replace('http: {listen: "127.0.0.1:0"}', f'''http:
  listen: "127.0.0.1:0"
  api_keys: [{{name: ops, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}", role: admin}}]''')
    path = write(tmp_path, "feedd.yaml", text + 'store: {type: postgresql, dsn: "${FEEDD_TEST_DSN}"}\n')
    nodes = [Daemon(load_config(path), drain_seconds=1, workers=0)
             for _ in range(2)]
    for node in nodes:
        await node.start()
    a, b = nodes
    try:
        assert not await login(b)
        status, answer = await call(a, "POST", "/connections", {"name": "globex", "password": PASSWORD})
        assert status == 201, answer
        await eventually(lambda: login(b), 15, "the new partner logs in through the other node")
        status, answer = await call(a, "PATCH", "/connections/globex", {"enabled": False})
        assert status == 200, answer

        async def refused() -> bool:
            return not await login(b)

        await eventually(refused, 15, "the disabled partner is refused by the other node")
    finally:
        for node in nodes:
            await node.stop()
