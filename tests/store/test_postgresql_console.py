"""Two feedd nodes sharing one PostgreSQL store, as behind a load balancer: a console session made on one
is good on the other, and a logout on either ends it on both."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")

import psycopg

from tests.helpers import write
from tests.http.test_console_sessions import config_text, running
from tests.sftp.conftest import host_key

__all__ = ["host_key"]

STORE = 'store: {type: postgresql, dsn: "${FEEDD_TEST_DSN}"}\n'


async def test_a_session_made_on_one_node_is_good_on_the_other_until_a_logout_on_either(
        tmp_path: Path, pg_dsn: str, host_key: Path) -> None:
    env = {"FEEDD_TEST_DSN": pg_dsn}
    paths = [write(tmp_path / name, "feedd.yaml", config_text(host_key, store=STORE)) for name in ("a", "b")]
    async with AsyncExitStack() as nodes:
        a = await nodes.enter_async_context(running(paths[0], env))
        b = await nodes.enter_async_context(running(paths[1], env))
        token = await a.log_in("admin")
        assert await b.logged_in(token), "the other node does not know the session"
        # The forms of a page from one node post on the other (the CSRF token is the same on both).
        csrf = await a.csrf(token)
        assert await b.csrf(token) == csrf
        assert await b.post(token, "/ui/pipelines/demo-contacts/active", {"csrf": csrf, "active": "0"}) == 303
        assert await a.daemon.store.pipeline_overrides() == {"demo-contacts": False}  # type: ignore[union-attr]

        viewer = await b.log_in("viewer")
        assert await a.logged_in(viewer)
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute("SELECT token_hash, operator, role FROM console_sessions ORDER BY operator").fetchall()
            text = repr(conn.execute("SELECT * FROM console_sessions").fetchall())
        assert [(operator, role) for _, operator, role in rows] == [("admin", "admin"), ("viewer", "viewer")]
        for secret in (token, viewer, csrf):
            assert secret not in text, "a session's token (or its CSRF token) is in the database in clear"

        await b.log_out(token)  # logged out on the other node: refused at once on the first
        assert not await a.logged_in(token)
        assert not await b.logged_in(token)
        assert await a.post(token, "/ui/pipelines/demo-contacts/active", {"csrf": csrf, "active": "1"}) == 403
        assert await a.logged_in(viewer), "another operator's session ended with it"
