"""Expected arrivals end to end: a real daemon whose schedule's clock the test moves through minute windows,
real files taken over the partner's inbox, real webhook events."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from feedd.metrics import REGISTRY
from feedd.model import iso, utcnow
from tests.delivery.conftest import Receiver
from tests.helpers import eventually
from tests.http.conftest import Api
from tests.schedule.conftest import Clock, outbox, stop
from tests.sftp.logs import capture_logs

Start = Callable[..., Awaitable[Api]]


def missed_total() -> float:
    return REGISTRY.get_sample_value("feedd_arrivals_missed_total", {"pipeline": "demo-contacts"}) or 0.0


def plan() -> tuple[datetime, float]:
    """A minute to miss and a grace such that the next window opens two seconds ago: the missed window lies
    wholly before the test began (no file can fall in it), and a file dropped now falls in the next one."""
    now = utcnow()
    due = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    return due, (now - timedelta(seconds=2) - due).total_seconds()


def setup(receiver: Receiver, grace: float, notify: bool = True) -> dict[str, str]:
    return {
        "pipeline_extra": f'expect: {{cron: "* * * * *", grace: {grace:.3f}s, notify_partner: {str(notify).lower()}}}',
        "extra": f'webhooks:\n  - {{url: "{receiver.url("/events")}", events: ["arrival.*"]}}\n',
    }


async def judged(api: Api, until: datetime) -> bool:
    assert api.daemon.store is not None
    state = await api.daemon.store.arrival_state("demo-contacts")
    return state is not None and state.checked_until is not None and state.checked_until >= until


async def missed_events(api: Api) -> list[dict[str, Any]]:
    assert api.daemon.store is not None
    return [json.loads(e.body)["data"] for e in await api.daemon.store.events_of("arrival.missed")]


async def test_a_missed_minute_is_reported_once_then_a_file_keeps_the_next_from_being_missed(
    start_feedd: Start, receiver: Receiver
) -> None:
    # the log line is read as logged, whatever an earlier test made of the output's configuration
    with capture_logs() as logs:
        due, grace = plan()
        clock = Clock(due - timedelta(seconds=1))  # watching starts before the window to miss
        api = await start_feedd(clock, **setup(receiver, grace))
        assert api.daemon.scheduler is not None and api.daemon.store is not None
        await eventually(lambda: api.daemon.store.arrival_state("demo-contacts"))  # type: ignore[union-attr]
        before = missed_total()

        clock.now = due + timedelta(seconds=grace + 0.1)
        api.daemon.scheduler.wake()
        got = await eventually(lambda: _async(receiver.at("/events")))
        body = json.loads(got[0].body)
        assert body["type"] == "arrival.missed"
        assert body["data"]["pipeline"] == "demo-contacts" and body["data"]["connection"] == "demo"
        assert body["data"]["expectedBy"] == iso(due) and body["data"]["lastArrivalAt"] is None
        assert missed_total() == before + 1
        notices = sorted(outbox(api).glob("MISSING-demo-contacts-*.txt"))
        assert [p.name for p in notices] == [f"MISSING-demo-contacts-{due:%Y-%m-%dT%H%M}.txt"]
        assert "No file arrived for the feed 'demo-contacts'" in notices[0].read_text()

        inbox = outbox(api).parent / "inbox"
        (inbox / "today.csv").write_text("email\na@example.com\n")
        runs = await eventually(lambda: _finished(api))
        assert runs[0]["status"] in ("completed", "delivered")

        clock.now = due + timedelta(seconds=60 + grace + 0.1)
        api.daemon.scheduler.wake()
        await eventually(lambda: judged(api, due + timedelta(minutes=1)))
        assert [e["expectedBy"] for e in await missed_events(api)] == [iso(due)]
        assert missed_total() == before + 1
        assert len(list(outbox(api).glob("MISSING-*"))) == 1

        status, shown = await api.call("GET", "/pipelines/demo-contacts")
        assert status == 200
        arrivals = shown["arrivals"]
        assert arrivals["lastAt"] == runs[0]["source"]["receivedAt"]
        assert [m["expectedBy"] for m in arrivals["missed"]] == [iso(due)]
        assert arrivals["nextDueAt"] is not None
        assert len(receiver.at("/events")) == 1
        logged = [e for e in logs if e.get("event") == "arrival.missed"]
        assert len(logged) == 1 and logged[0]["pipeline"] == "demo-contacts", logged


async def test_a_restart_reports_a_window_missed_while_down_once(start_feedd: Start, receiver: Receiver) -> None:
    due, grace = plan()
    clock = Clock(due - timedelta(seconds=1))
    api = await start_feedd(clock, **setup(receiver, grace, notify=False))
    await eventually(lambda: api.daemon.store.arrival_state("demo-contacts"))  # type: ignore[union-attr]
    await stop(api)

    clock.now = due + timedelta(seconds=grace + 0.1)  # the window closed while feedd was stopped
    api = await start_feedd(clock, **setup(receiver, grace, notify=False))
    await eventually(lambda: judged(api, due))
    assert [e["expectedBy"] for e in await missed_events(api)] == [iso(due)]
    await stop(api)

    # started again, and later a second window is missed: each is reported once, none twice
    clock.now = due + timedelta(seconds=60 + grace + 0.1)
    api = await start_feedd(clock, **setup(receiver, grace, notify=False))
    await eventually(lambda: judged(api, due + timedelta(minutes=1)))
    assert [e["expectedBy"] for e in await missed_events(api)] == [iso(due), iso(due + timedelta(minutes=1))]
    assert list(outbox(api).glob("MISSING-*")) == []  # notify_partner is off


async def test_a_schedule_put_back_after_a_pause_is_watched_from_then_on(
    start_feedd: Start, receiver: Receiver
) -> None:
    due, grace = plan()
    clock = Clock(due - timedelta(seconds=1))
    api = await start_feedd(clock, **setup(receiver, grace, notify=False))
    await eventually(lambda: api.daemon.store.arrival_state("demo-contacts"))  # type: ignore[union-attr]
    await stop(api)

    api = await start_feedd(clock, extra=setup(receiver, grace)["extra"])  # expects nothing for a while
    state = await api.daemon.store.arrival_state("demo-contacts")  # type: ignore[union-attr]
    assert state is not None and state.expect == ""
    await stop(api)

    clock.now = due + timedelta(seconds=grace + 0.1)  # the window closed during the pause
    api = await start_feedd(clock, **setup(receiver, grace, notify=False))

    async def watched_again() -> bool:
        state = await api.daemon.store.arrival_state("demo-contacts")  # type: ignore[union-attr]
        return state is not None and state.expect != "" and state.since == clock.now

    await eventually(watched_again)
    assert await missed_events(api) == []


async def _async(value: Any) -> Any:
    return value


async def _finished(api: Api) -> list[dict[str, Any]] | None:
    status, page = await api.call("GET", "/runs?pipeline=demo-contacts")
    assert status == 200
    done = [r for r in page["data"] if r["status"] in ("completed", "delivered", "failed")]
    return done or None
