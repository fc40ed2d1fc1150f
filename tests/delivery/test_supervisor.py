"""Long-lived tasks under the supervisor: a loop that crashes once is logged and restarted, and the work it
does goes on; one that keeps crashing makes `/healthz` 503 and the metrics name it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feedd import failpoints
from tests.delivery.conftest import SECRET, Receiver
from tests.helpers import sample
from tests.http.conftest import Api
from tests.http.test_runs import drop
from tests.sftp.logs import capture_logs, events, wait_for


def crash_once(monkeypatch: pytest.MonkeyPatch, point: str, api: Api) -> None:
    monkeypatch.setattr(failpoints, "ARMED", point)
    monkeypatch.setattr(failpoints, "TIMES", 1)
    for part in api.daemon.components:  # look now rather than at the next idle poll
        getattr(part, "wake", lambda: None)()


def crashed(logs: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return [e for e in events(logs, "task.crashed") if e.get("component") == component]


async def delivered(api: Api, within: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    page: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, page = await api.call("GET", "/runs")
        if page["data"] and page["data"][0]["status"] == "delivered":
            return page["data"][0]  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"not delivered: {page}")


async def test_runs_are_processed_and_delivered_after_the_claim_loop_crashed(
        start_api: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    api: Api = await start_api(pipeline_extra=f"destinations: [{{type: directory, path: \"{out}\"}}]")
    with capture_logs() as logs:
        crash_once(monkeypatch, "runner.claim", api)
        await wait_for(lambda: bool(crashed(logs, "runner")))
        [entry] = crashed(logs, "runner")
        assert "FailpointError: failpoint runner.claim" in entry["exception"]  # its traceback, once
        await drop(api, "a.csv", "email\nann@example.org\n")
        run = await delivered(api)
    assert run["deliveries"][0]["status"] == "delivered" and list(out.iterdir())
    _, text = await api.call("GET", "/metrics")
    assert (sample(text, "feedd_task_restarts_total", task="runner") or 0) >= 1
    assert (await api.call("GET", "/healthz")) == (200, {"status": "ok"})


async def test_a_delivery_is_made_after_the_delivery_loop_crashed(
        start_api: Callable[..., Any], receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    api: Api = await start_api(pipeline_extra=f"""destinations:
      - {{type: webhook, url: "{receiver.url('/ingest')}", secret: "{SECRET}"}}""")
    with capture_logs() as logs:
        crash_once(monkeypatch, "due.delivery", api)
        await wait_for(lambda: bool(crashed(logs, "delivery")))
        await drop(api, "a.csv", "email\nann@example.org\n")
        run = await delivered(api)
    assert run["deliveries"][0]["attempts"] == 1 and len(receiver.at("/ingest")) == 1


async def test_an_event_is_sent_after_the_event_loop_crashed(
        start_api: Callable[..., Any], receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    api: Api = await start_api(extra=f"""webhooks: [{{url: "{receiver.url('/events')}", secret: "{SECRET}",
                                                     events: ["run.completed"]}}]""")
    with capture_logs() as logs:
        crash_once(monkeypatch, "due.events", api)
        await wait_for(lambda: bool(crashed(logs, "events")))
        await drop(api, "a.csv", "email\nann@example.org\n")
        await wait_for(lambda: len(receiver.at("/events")) == 1, within=30)


async def test_a_task_that_keeps_crashing_makes_healthz_503_naming_it(
        start_api: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    api: Api = await start_api()
    assert (await api.call("GET", "/healthz")) == (200, {"status": "ok"})
    with capture_logs() as logs:
        monkeypatch.setattr(failpoints, "ARMED", "runner.claim")  # every time
        await wait_for(lambda: bool(events(logs, "task.failing")), within=30)
        assert len(crashed(logs, "runner")) >= 5
    status, body = await api.call("GET", "/healthz")
    assert status == 503 and body == {"status": "failing", "failing": ["runner"]}
    _, text = await api.call("GET", "/metrics")
    assert sample(text, "feedd_task_failing", task="runner") == 1.0
    assert sample(text, "feedd_task_failing", task="delivery") == 0.0
