"""The operator console in a real browser (Debian's chromium, driven by Playwright): the walk an operator
makes, what a viewer may not do, CSRF, and sessions that end. Screenshots of each page go to the test's
temp dir (`shots/`)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.helpers import DEMO_HASH, DEMO_PASSWORD
from tests.http.conftest import Api
from tests.http.test_runs import drop

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]

OPERATORS = f"""\
  operators:
    - {{name: admin, password_hash: "{DEMO_HASH}", role: admin}}
    - {{name: viewer, password_hash: "{DEMO_HASH}", role: viewer}}
"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def console(start_api: Callable[..., Any], ttl: str = "10m", pipeline_extra: str = "") -> Api:
    return await start_api(http_extra=f"session_ttl: {ttl}\n{OPERATORS}",  # type: ignore[no-any-return]
                           pipeline_extra=pipeline_extra)


async def log_in(page: Any, url: str, name: str, password: str = DEMO_PASSWORD) -> None:
    await page.goto(f"{url}/ui/")
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def until(check: Callable[[], Any], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def test_an_operator_sees_a_failed_drop_opens_it_and_acks_it(start_api: Callable[..., Any], browser: Any,
                                                                   tmp_path: Path) -> None:
    api = await console(start_api, pipeline_extra='expect: {cron: "0 6 * * 1-5", timezone: UTC, grace: 30m}')
    shots = tmp_path / "shots"
    page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    await log_in(page, api.url, "admin")
    await page.get_by_role("heading", name="Overview").wait_for()
    cookie = next(c for c in await page.context.cookies() if c["name"] == "feedd_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]

    # The partner drops a file whose every row is bad: the overview shows it by itself (htmx refresh).
    await drop(api, "contacts.csv", "email\nnot-an-email\nalso-bad\n")
    failed = page.get_by_role("link", name="1 failed").first
    await failed.wait_for(timeout=20_000)
    # the chart of runs per day is refreshed with the table: today's bar has the run
    await page.get_by_text("(peak 1)").wait_for(timeout=20_000)
    await page.screenshot(path=str(shots / "overview.png"), full_page=True)

    await failed.click()
    await page.get_by_role("heading", name="Runs").wait_for()
    await page.screenshot(path=str(shots / "runs.png"), full_page=True)
    await page.locator("table a code").first.click()
    await page.get_by_role("heading", name="Source").wait_for()
    body = await page.locator("main").inner_text()
    assert "contacts.csv" in body and "failed" in body and "not-an-email" in body
    await page.screenshot(path=str(shots / "run.png"), full_page=True)

    await page.get_by_role("button", name="Acknowledge").click()
    await page.get_by_text("Done: acknowledged.").wait_for()
    [run] = await api.runs()
    assert run.acknowledged_at is not None  # through the same code as POST /runs/{id}/ack
    assert await page.get_by_role("button", name="Acknowledge").count() == 0

    for name in ("connections", "connections/demo", "pipelines", "pipelines/demo-contacts", "audit",
                 f"runs/{run.run_id}/review"):
        response = await page.goto(f"{api.url}/ui/{name}")
        assert response is not None and response.status == 200, name
        await page.screenshot(path=str(shots / f"{name.replace('/', '-')}.png"), full_page=True)
    await page.goto(f"{api.url}/ui/nodes")  # this node, alive, as GET /cluster lists it
    await page.screenshot(path=str(shots / "nodes.png"), full_page=True)
    row = await page.locator("#nodes tbody tr").inner_text()
    assert "(this one)" in row and "alive" in row and api.daemon.node_id in row
    await page.goto(f"{api.url}/ui/pipelines/demo-contacts")
    arrivals = await page.locator("main").inner_text()
    assert "0 6 * * 1-5" in arrivals and "Next due" in arrivals

    # A new managed connection, made through the form (and so through the management layer).
    await page.goto(f"{api.url}/ui/connections/new")
    await page.get_by_label("Name (the SFTP user name)").fill("globex")
    await page.get_by_label("Password", exact=False).first.fill("globex-password-1")
    await page.get_by_role("button", name="Save").click()
    await page.get_by_role("heading", name="Connection globex").wait_for()
    assert "globex" in api.daemon.config.connections
    entries, _ = await api.daemon.store.list_audit()  # type: ignore[union-attr]
    assert (entries[0].actor, entries[0].action, entries[0].name) == ("admin", "create", "globex")
    await page.get_by_role("link", name="Edit").click()
    await page.get_by_label("Enabled").uncheck()
    await page.get_by_label("Max file size (e.g. 1GiB; empty: none)").fill("1MiB")
    await page.get_by_role("button", name="Save").click()
    await page.get_by_role("heading", name="Connection globex").wait_for()
    globex = api.daemon.config.connections["globex"]
    assert not globex.enabled and globex.max_file_size == 1024**2 and globex.password_hash  # the password kept

    # Failed logins from another browser get this address banned; this operator's session goes on, sees
    # the ban and lifts it, and the other browser can log in again.
    other = await (await browser.new_context()).new_page()
    for _ in range(5):  # sftp.ban.after_failures defaults to 5
        await log_in(other, api.url, "admin", "wrong")
        await other.get_by_text("Wrong name or password", exact=False).wait_for()
    await page.goto(f"{api.url}/ui/connections")
    await page.screenshot(path=str(shots / "connections-banned.png"), full_page=True)
    await page.get_by_role("button", name="Unban 127.0.0.1").click()
    await page.get_by_role("heading", name="Connections").wait_for()
    assert await page.get_by_role("button", name="Unban 127.0.0.1").count() == 0
    await log_in(other, api.url, "admin")
    await other.get_by_role("heading", name="Overview").wait_for()

    # Phone width: the same page, one column, nothing cut off sideways.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{api.url}/ui/runs/{run.run_id}")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.screenshot(path=str(shots / "run-phone.png"), full_page=True)

    # A POST without the CSRF token is refused, even with a good session cookie.
    refused = await page.request.post(f"{api.url}/ui/pipelines/demo-contacts/active", form={"active": "0"})
    assert refused.status == 403
    assert (await api.daemon.store.pipeline_overrides()).get("demo-contacts") is None  # type: ignore[union-attr]

    await page.get_by_role("button", name="Log out").click()
    await page.get_by_role("button", name="Log in").wait_for()
    response = await page.goto(f"{api.url}/ui/runs")
    assert response is not None and page.url.startswith(f"{api.url}/ui/login")


async def test_a_viewer_sees_but_cannot_change(start_api: Callable[..., Any], browser: Any, tmp_path: Path) -> None:
    api = await console(start_api)
    await drop(api, "contacts.csv", "email\nnot-an-email\n")
    await until(lambda: _finished(api), "the run finished")
    [run] = await api.runs()
    page = await (await browser.new_context()).new_page()
    await log_in(page, api.url, "viewer")
    await page.goto(f"{api.url}/ui/runs/{run.run_id}")
    await page.get_by_role("heading", name="Source").wait_for()
    await page.screenshot(path=str(tmp_path / "viewer-run.png"), full_page=True)
    assert await page.get_by_role("button", name="Acknowledge").count() == 0
    assert await page.get_by_role("button", name="Reprocess the input").count() == 0
    # A forged POST with the viewer's own valid CSRF token is still refused on the server.
    csrf = await page.locator("form.logout input[name=csrf]").get_attribute("value")
    forged = await page.request.post(f"{api.url}/ui/runs/{run.run_id}/ack", form={"csrf": csrf})
    assert forged.status == 403
    [run] = await api.runs()
    assert run.acknowledged_at is None

    # With JavaScript off and only the keyboard, an admin logs in and acknowledges the run.
    plain = await (await browser.new_context(java_script_enabled=False)).new_page()
    await plain.goto(f"{api.url}/ui/runs/{run.run_id}")  # not logged in: to the login page, and back after it
    await plain.get_by_label("Name").focus()
    await plain.keyboard.type("admin")
    await plain.keyboard.press("Tab")
    await plain.keyboard.type(DEMO_PASSWORD)
    await plain.keyboard.press("Enter")
    ack = plain.get_by_role("button", name="Acknowledge")
    await ack.focus()
    await plain.keyboard.press("Enter")
    await plain.get_by_text("Done: acknowledged.").wait_for()
    [run] = await api.runs()
    assert run.acknowledged_at is not None


async def test_wrong_passwords_ban_the_address_and_sessions_expire(start_api: Callable[..., Any], browser: Any,
                                                                   tmp_path: Path) -> None:
    api = await console(start_api, ttl="2s")
    page = await (await browser.new_context()).new_page()
    await log_in(page, api.url, "admin")
    await page.get_by_role("heading", name="Overview").wait_for()
    # The session ends by itself: the next page asks for a login again.
    await until(lambda: _asks_login(page, api), "the session expired", within=15)

    for _ in range(5):  # sftp.ban.after_failures defaults to 5
        await log_in(page, api.url, "admin", "wrong")
        await page.get_by_text("Wrong name or password", exact=False).or_(
            page.get_by_text("Too many failed logins", exact=False)).wait_for()
    await log_in(page, api.url, "admin")  # the right password, from a banned address
    await page.get_by_text("Too many failed logins", exact=False).wait_for()
    await page.screenshot(path=str(tmp_path / "banned.png"), full_page=True)
    # SFTP logins from that address are refused too, with the right password: the same bans.
    with pytest.raises((asyncssh.Error, OSError)):
        async with asyncssh.connect("127.0.0.1", api.sftp_port, username="demo", password=DEMO_PASSWORD,
                                    known_hosts=None, client_keys=None):
            pass


async def _finished(api: Api) -> bool:
    runs = await api.runs()
    return bool(runs) and all(str(r.status) in ("completed", "delivered", "failed") for r in runs)


async def _asks_login(page: Any, api: Api) -> bool:
    await page.goto(f"{api.url}/ui/runs")
    return bool(page.url.startswith(f"{api.url}/ui/login"))
