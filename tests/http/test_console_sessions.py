"""Console sessions kept in the store, through a plain HTTP client: a session outlives a restart of the
daemon, ends at logout and at its expiry, follows the operator's role, removal and password in the config
in force, and the store never holds its token."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import aiohttp

from feedd.config import load_config
from feedd.credentials import hash_password
from feedd.daemon import Daemon
from tests.helpers import DEMO_HASH, DEMO_PASSWORD, eventually, write
from tests.sftp.conftest import host_key

__all__ = ["host_key"]

def config_text(host_key: Path, ttl: str = "10m", operators: str = "", store: str = "") -> str:
    operators = operators or (f'    - {{name: admin, password_hash: "{DEMO_HASH}", role: admin}}\n'
                              f'    - {{name: viewer, password_hash: "{DEMO_HASH}", role: viewer}}\n')
    return f"""\
state_dir: ./var
log: {{level: warning, format: json}}
sftp: {{listen: "127.0.0.1:0", host_keys: ["{host_key}"]}}
http:
  listen: "127.0.0.1:0"
  session_ttl: {ttl}
  operators:
{operators}schemas:
  contact:
    fields:
      email: {{type: email, required: true}}
connections:
  demo:
    password_hash: "{DEMO_HASH}"
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv"]
{store}"""


@asynccontextmanager
async def running(path: Path, env: dict[str, str] | None = None) -> AsyncIterator[Console]:
    daemon = Daemon(load_config(path, env=env or {}), drain_seconds=1, workers=0)
    await daemon.start()
    try:
        assert daemon.http is not None
        async with aiohttp.ClientSession() as http:
            yield Console(daemon, f"http://127.0.0.1:{daemon.http.addresses[0].port}", http)
    finally:
        await daemon.stop()


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Console:
    """One feedd node's console, asked as a browser would, with the session cookie given by hand (so that
    the same cookie can be taken to another node)."""

    def __init__(self, daemon: Daemon, url: str, http: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.url = url
        self.http = http

    async def log_in(self, name: str = "admin", password: str = DEMO_PASSWORD) -> str:
        """The session cookie's value."""
        async with self.http.get(f"{self.url}/ui/login") as r:
            assert r.status == 200
            login = r.cookies["feedd_login"].value
            csrf = _CSRF.search(await r.text())
        assert csrf is not None and csrf.group(1) == login
        async with self.http.post(f"{self.url}/ui/login", cookies={"feedd_login": login}, allow_redirects=False,
                                  data={"csrf": login, "name": name, "password": password, "next": "/ui/"}) as r:
            assert r.status == 303, (r.status, await r.text())
            return r.cookies["feedd_session"].value

    async def get(self, token: str, path: str = "/ui/runs") -> tuple[int, str]:
        """The status and body of a page; a 303 to the login page says the session is not (or no longer) good."""
        async with self.http.get(self.url + path, cookies={"feedd_session": token}, allow_redirects=False) as r:
            return r.status, await r.text()

    async def logged_in(self, token: str) -> bool:
        status, body = await self.get(token)
        assert status in (200, 303), (status, body)
        return status == 200

    async def csrf(self, token: str) -> str:
        status, body = await self.get(token)
        found = _CSRF.search(body)
        assert status == 200 and found is not None, status
        return found.group(1)

    async def post(self, token: str, path: str, data: dict[str, str]) -> int:
        async with self.http.post(self.url + path, cookies={"feedd_session": token}, data=data,
                                  allow_redirects=False) as r:
            return r.status

    async def log_out(self, token: str) -> None:
        assert await self.post(token, "/ui/logout", {"csrf": await self.csrf(token)}) == 303


async def test_a_session_outlives_a_restart_and_the_store_never_holds_its_token(tmp_path: Path,
                                                                               host_key: Path) -> None:
    path = write(tmp_path, "feedd.yaml", config_text(host_key))
    async with running(path) as first:
        token = await first.log_in()
        assert await first.logged_in(token)
        csrf = await first.csrf(token)
    async with running(path) as again:
        assert await again.logged_in(token), "the restart logged the operator out"
        assert await again.csrf(token) == csrf  # the forms of a page opened before the restart still post
        assert await again.post(token, "/ui/pipelines/demo-contacts/active", {"csrf": csrf, "active": "0"}) == 303
        assert await again.post(token, "/ui/pipelines/demo-contacts/active", {"csrf": "x" * 64, "active": "1"}) == 403
        assert (await again.daemon.store.pipeline_overrides()) == {"demo-contacts": False}  # type: ignore[union-attr]
        other = await again.log_in("viewer")
    with closing(sqlite3.connect(tmp_path / "var" / "feedd.db")) as db:
        rows = db.execute("SELECT * FROM console_sessions ORDER BY operator").fetchall()
        dump = "\n".join(line for line in db.iterdump())
    assert [(r[1], r[2]) for r in rows] == [("admin", "admin"), ("viewer", "viewer")]
    for secret in (token, other, csrf):
        assert secret not in dump, "a session's token (or its CSRF token) is in the database in clear"


async def test_logout_and_expiry_end_a_session(tmp_path: Path, host_key: Path) -> None:
    path = write(tmp_path, "feedd.yaml", config_text(host_key, ttl="2s"))
    async with running(path) as node:
        token = await node.log_in()
        assert await node.logged_in(token)
        # It ends by itself at its expiry, and nothing brings it back.
        await eventually(lambda: _logged_out(node, token), within=30, what="the session expired")
        short = await node.log_in()  # a login sweeps the expired sessions away
        with closing(sqlite3.connect(tmp_path / "var" / "feedd.db")) as db:
            assert db.execute("SELECT count(*) FROM console_sessions").fetchone() == (1,)
        await node.log_out(short)
        assert not await node.logged_in(short)
        assert await node.post(short, "/ui/pipelines/demo-contacts/active", {"csrf": "x", "active": "0"}) == 403


async def test_a_reload_applies_the_operators_role_removal_and_password_to_open_sessions(
        tmp_path: Path, host_key: Path) -> None:
    path = write(tmp_path, "feedd.yaml", config_text(host_key))
    async with running(path) as node:
        admin, viewer = await node.log_in("admin"), await node.log_in("viewer")
        assert await node.post(viewer, "/ui/pipelines/demo-contacts/active",
                               {"csrf": await node.csrf(viewer), "active": "0"}) == 403

        # viewer becomes an admin, admin a viewer: their open sessions act with the new roles.
        path.write_text(config_text(host_key, operators=(
            f'    - {{name: admin, password_hash: "{DEMO_HASH}", role: viewer}}\n'
            f'    - {{name: viewer, password_hash: "{DEMO_HASH}", role: admin}}\n')))
        assert await node.daemon.reload()
        assert await node.post(viewer, "/ui/pipelines/demo-contacts/active",
                               {"csrf": await node.csrf(viewer), "active": "0"}) == 303
        assert await node.post(admin, "/ui/pipelines/demo-contacts/active",
                               {"csrf": await node.csrf(admin), "active": "1"}) == 403

        # viewer is removed, and admin's password is set again (the same one, hashed anew): both sessions end.
        path.write_text(config_text(host_key, operators=(
            f'    - {{name: admin, password_hash: "{hash_password(DEMO_PASSWORD)}", role: admin}}\n')))
        assert await node.daemon.reload()
        assert not await node.logged_in(viewer)
        assert not await node.logged_in(admin)
        fresh = await node.log_in("admin")  # the same password, under its new hash
        assert await node.logged_in(fresh)


async def _logged_out(node: Console, token: str) -> bool:
    return not await node.logged_in(token)
