"""The review page in a real browser: a partner's file with a renamed required column waits for a person,
who chooses the column, previews, approves with remember, and sees the next file map by itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feedd.model import RunStatus
from tests.http.conftest import Api
from tests.http.test_console import CHROMIUM, OPERATORS, browser, log_in, until
from tests.http.test_runs import drop

__all__ = ["browser"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]

REVIEWED = """review: [unmapped_required_field]
    destinations: [{type: directory, path: ./out}]"""


async def test_choose_the_column_preview_approve_and_the_next_file_maps_by_itself(
        start_api: Callable[..., Any], browser: Any, tmp_path: Path) -> None:
    api: Api = await start_api(http_extra=OPERATORS.lstrip(), pipeline_extra=REVIEWED)
    shots = tmp_path / "shots"
    await drop(api, "first.csv", "E-Mail Addr\nann@example.org\nbob@example.org\n")

    async def waiting() -> Any:
        runs = await api.runs()
        return runs[0] if runs and runs[0].status is RunStatus("needs_review") else None

    await until(waiting, "the run waits for review")
    [run] = await api.runs()
    page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    await log_in(page, api.url, "admin")
    await page.get_by_role("link", name="1", exact=True).wait_for()  # "needs review" on the overview
    await page.goto(f"{api.url}/ui/runs/{run.run_id}")
    await page.get_by_role("link", name="review it").click()
    await page.get_by_role("heading", name="The file's first rows").wait_for()
    assert "ann@example.org" in await page.locator("main").inner_text()
    await page.get_by_label("email").select_option("E-Mail Addr")
    await page.get_by_role("button", name="Preview").click()
    await page.get_by_text("Approving would end completed", exact=False).wait_for()
    assert "2 valid" in await page.get_by_role("status").inner_text()
    [run] = await api.runs()
    assert run.status is RunStatus("needs_review")  # a preview changes nothing
    await page.screenshot(path=str(shots / "review.png"), full_page=True)

    await page.get_by_role("button", name="Approve with this mapping").click()  # "remember" is checked
    await page.get_by_text("Done: approved.").wait_for()
    done = await api.wait_run(run.run_id)
    assert done["status"] == "delivered" and done["counts"]["valid"] == 2
    await page.reload()
    assert "delivered" in await page.locator("h1").inner_text()

    await drop(api, "second.csv", "E-Mail Addr\ncid@example.org\n")

    async def second() -> Any:
        runs = [r for r in await api.runs() if r.source.name.endswith("second.csv")]
        return runs[0] if runs and runs[0].status.finished else None

    await until(second, "the second file is done")
    [run2] = [r for r in await api.runs() if r.source.name.endswith("second.csv")]
    assert run2.status is RunStatus.DELIVERED
    await page.goto(f"{api.url}/ui/runs/{run2.run_id}")
    assert "remembered" in await page.locator("main").inner_text()
    await page.screenshot(path=str(shots / "remembered.png"), full_page=True)
    await page.get_by_role("button", name="Acknowledge").click()
    await page.get_by_text("Done: acknowledged.").wait_for()
    [run2] = [r for r in await api.runs() if r.source.name.endswith("second.csv")]
    assert run2.acknowledged_at is not None


async def test_reject_with_a_message_and_a_viewer_cannot_decide(start_api: Callable[..., Any], browser: Any) -> None:
    api: Api = await start_api(http_extra=OPERATORS.lstrip(), pipeline_extra=REVIEWED)
    await drop(api, "first.csv", "E-Mail Addr\nann@example.org\n")

    async def waiting() -> Any:
        runs = await api.runs()
        return runs and runs[0].status is RunStatus("needs_review")

    await until(waiting, "the run waits for review")
    [run] = await api.runs()
    viewer = await (await browser.new_context()).new_page()
    await log_in(viewer, api.url, "viewer")
    await viewer.goto(f"{api.url}/ui/runs/{run.run_id}/review")
    await viewer.get_by_role("heading", name="The file's first rows").wait_for()
    assert await viewer.get_by_role("button", name="Approve with this mapping").count() == 0
    csrf = await viewer.locator("form.logout input[name=csrf]").get_attribute("value")
    forged = await viewer.request.post(f"{api.url}/ui/runs/{run.run_id}/review/approve",
                                       form={"csrf": csrf, "map.email": "E-Mail Addr"})
    assert forged.status == 403

    page = await (await browser.new_context()).new_page()
    await log_in(page, api.url, "admin")
    await page.goto(f"{api.url}/ui/runs/{run.run_id}/review")
    await page.get_by_label("Message to the partner", exact=False).fill("Please send the column named email.")
    await page.get_by_role("button", name="Reject the file").click()
    await page.get_by_text("Done: rejected.").wait_for()
    [run] = await api.runs()
    assert run.status is RunStatus.FAILED and run.error is not None
    assert (run.error.code, run.error.message) == ("rejected_by_reviewer", "Please send the column named email.")
