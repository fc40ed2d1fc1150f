"""What failed shows at once: each failed event attempt is logged, failed events are listed for keys with
every connection and counted in the metrics, and runs whose deliveries failed for good are flagged and
filtered, over the API and in `feedd runs list`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from feedd import events as feedd_events
from tests.delivery.conftest import SECRET, Receiver
from tests.delivery.test_dispatch import settled
from tests.helpers import sample
from tests.http.conftest import ADMIN_KEY, DEMO_KEY, Api
from tests.http.test_client import cli
from tests.http.test_runs import drop
from tests.sftp.logs import capture_logs, events, wait_for


async def failed_events(api: Api, count: int, within: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    page: Any = None
    while time.monotonic() < deadline:
        status, page = await api.call("GET", "/events?status=failed")
        assert status == 200, page
        if len(page["data"]) >= count:
            return page["data"]  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {count} failed events: {page}")


async def test_a_failing_event_endpoint_shows_at_once(start_api: Callable[..., Any], receiver: Receiver,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedd_events, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(feedd_events, "BACKOFF_BASE", 0.01)
    receiver.script["/down"] = [503]
    api: Api = await start_api(extra=f"""webhooks: [{{url: "{receiver.url('/down')}", secret: "{SECRET}",
                                                     events: ["run.completed"]}}]""")
    with capture_logs() as logs:
        await drop(api, "a.csv", "email\nann@example.org\n")
        await wait_for(lambda: bool(events(logs, "event.attempt_failed")))
        first = events(logs, "event.attempt_failed")[0]
        assert first["log_level"] == "warning" and first["url"] == receiver.url("/down")
        assert first["status"] == 503 and first["error"] == "HTTP 503" and first["attempt"] == 1
        [event] = await failed_events(api, 1)
    assert len(events(logs, "event.attempt_failed")) == 2
    assert event["url"] == receiver.url("/down") and event["type"] == "run.completed"
    assert event["status"] == "failed" and event["attempts"] == 2 and event["lastError"] == "HTTP 503"
    assert event["data"]["status"] == "completed"
    status, page = await api.call("GET", "/events?status=delivered")
    assert status == 200 and page == {"data": [], "nextCursor": None}
    # events are not tied to one connection: a key limited to some may not list them
    status, body = await api.call("GET", "/events?status=failed", key=DEMO_KEY)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await api.call("GET", "/events?status=lost")
    assert status == 400 and body["error"]["code"] == "invalid_query"
    _, text = await api.call("GET", "/metrics")
    assert sample(text, "feedd_events", status="failed") == 1.0
    assert sample(text, "feedd_events", status="pending") == 0.0


async def test_events_are_paged_newest_first(start_api: Callable[..., Any], receiver: Receiver) -> None:
    api: Api = await start_api(extra=f"""webhooks: [{{url: "{receiver.url('/ok')}", events: ["run.completed"]}}]""")
    for i in range(3):
        await drop(api, f"a{i}.csv", f"email\nann{i}@example.org\n")
    await wait_for(lambda: len(receiver.at("/ok")) == 3, within=30)
    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        status, page = await api.call("GET", f"/events?status=delivered&limit=2{cursor}")
        assert status == 200, page
        seen += [e["createdAt"] for e in page["data"]]
        if page["nextCursor"] is None:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert len(seen) == 3 and seen == sorted(seen, reverse=True)


async def test_a_run_whose_delivery_failed_for_good_is_findable(start_api: Callable[..., Any],
                                                                receiver: Receiver) -> None:
    receiver.script["/ingest"] = [503, 200]
    api: Api = await start_api(pipeline_extra=f"""destinations:
      - {{type: webhook, url: "{receiver.url('/ingest')}", max_attempts: 1}}""")
    await drop(api, "bad.csv", "email\nann@example.org\n")
    failed = await settled(api)
    assert failed["deliveries"][0]["status"] == "failed" and failed["deliveryFailed"] is True
    await drop(api, "good.csv", "email\nbob@example.org\n")
    for _ in range(600):
        _, page = await api.call("GET", "/runs")
        if len(page["data"]) == 2 and page["data"][0]["status"] == "delivered":
            break
        await asyncio.sleep(0.05)
    good = page["data"][0]
    assert good["status"] == "delivered" and good["deliveryFailed"] is False
    _, one = await api.call("GET", f"/runs/{failed['runId']}")
    assert one["deliveryFailed"] is True
    _, page = await api.call("GET", "/runs?deliveryFailed=true")
    assert [r["runId"] for r in page["data"]] == [failed["runId"]]
    _, page = await api.call("GET", "/runs?deliveryFailed=false")
    assert [r["runId"] for r in page["data"]] == [good["runId"]]
    status, body = await api.call("GET", "/runs?deliveryFailed=maybe")
    assert status == 400 and body["error"]["code"] == "invalid_query"

    env = {"FEEDD_URL": api.url, "FEEDD_API_KEY": ADMIN_KEY, "PATH": "/usr/bin:/bin"}
    code, out, err = await cli("runs", "list", env=env)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert "DELIVERY" in header.split()
    by_id = {row.split()[0]: row.split() for row in rows}
    # DELIVERY is the column before the source, the last one
    assert by_id[failed["runId"]][-2] == "failed" and by_id[good["runId"]][-2] == "-"
    code, out, err = await cli("runs", "list", "--delivery-failed", env=env)
    assert code == 0, err
    assert [row.split()[0] for row in out.splitlines()[1:]] == [failed["runId"]]
