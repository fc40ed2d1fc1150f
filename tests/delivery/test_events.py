"""Signed webhook events: every type, glob filters, retries under one webhook-id, none lost to kill -9."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.delivery.conftest import SECRET, Receiver, verify
from tests.helpers import DEMO_HASH, Daemon, write
from tests.http.conftest import Api
from tests.http.test_runs import drop


def kinds(receiver: Receiver, path: str) -> list[str]:
    return [json.loads(r.body)["type"] for r in receiver.at(path)]


async def until(check: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_every_event_type_signed_and_filtered(start_api: Callable[..., Any], receiver: Receiver) -> None:
    api: Api = await start_api(extra=f"""webhooks:
  - {{url: "{receiver.url('/all')}", secret: "{SECRET}"}}
  - {{url: "{receiver.url('/runs')}", secret: "{SECRET}", events: ["run.*"]}}
  - {{url: "{receiver.url('/uploads')}", events: ["upload.*", "schema.drift"]}}
""")
    await drop(api, "a.csv", "email\nann@example.org\n")
    await until(lambda: "run.completed" in kinds(receiver, "/all"))
    await drop(api, "b.csv", "email,name\nbob@example.org,Bob\n")  # a new header: drift
    await until(lambda: "schema.drift" in kinds(receiver, "/all"))
    await drop(api, "c.csv", "name\nnobody\n")  # no email column: the run fails
    await until(lambda: "run.failed" in kinds(receiver, "/all"))
    status, _ = await api.call("PATCH", "/pipelines/demo-contacts", json={"active": False})
    assert status == 200
    await drop(api, "d.csv", "email\ndee@example.org\n")
    await until(lambda: "run.held" in kinds(receiver, "/all"))
    _, up = await api.call("POST", "/outbound/uploads", json={
        "connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": 1})
    await api.call("PUT", f"/outbound/uploads/{up['uploadId']}/parts/1", data=json.dumps([
        {"order_id": "O1", "amount": "1.00"}]))
    _, done = await api.call("POST", f"/outbound/uploads/{up['uploadId']}/complete",
                             json={"parts": [{"partNumber": 1}]})
    _, up2 = await api.call("POST", "/outbound/uploads", json={
        "connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": 1})
    await api.call("POST", f"/outbound/uploads/{up2['uploadId']}/abort")
    await until(lambda: {"upload.completed", "upload.aborted", "run.delivered"} <= set(kinds(receiver, "/all")))
    every = set(kinds(receiver, "/all"))
    assert every == {"run.queued", "run.completed", "run.delivered", "run.failed", "run.held", "upload.completed",
                     "upload.aborted", "schema.drift"}
    assert set(kinds(receiver, "/runs")) == {t for t in every if t.startswith("run.")}
    assert set(kinds(receiver, "/uploads")) == {"upload.completed", "upload.aborted", "schema.drift"}
    for r in receiver.at("/all") + receiver.at("/runs"):
        assert verify(SECRET, r.headers, r.body), r
        assert r.headers["webhook-id"].startswith("msg_") and r.headers["webhook-timestamp"].isdigit()
    assert all("webhook-signature" not in r.headers for r in receiver.at("/uploads"))  # no secret, no signature
    drift = next(json.loads(r.body) for r in receiver.at("/all") if json.loads(r.body)["type"] == "schema.drift")
    assert drift["data"]["added"] == ["name"] and drift["data"]["removed"] == []
    delivered = next(json.loads(r.body) for r in receiver.at("/all")
                     if json.loads(r.body)["type"] == "run.delivered")
    assert delivered["data"]["runId"] == done["runId"] and delivered["data"]["status"] == "delivered"
    # one event, one id, whoever receives it
    ids = {json.loads(r.body)["type"]: r.headers["webhook-id"] for r in receiver.at("/runs")}
    assert all(ids[t] == {json.loads(r.body)["type"]: r.headers["webhook-id"] for r in receiver.at("/all")}[t]
               for t in ids if t != "run.queued")


async def test_an_event_is_retried_under_one_id(start_api: Callable[..., Any], receiver: Receiver) -> None:
    receiver.script["/flaky"] = [500, 200]
    api: Api = await start_api(extra=f"""webhooks: [{{url: "{receiver.url('/flaky')}", secret: "{SECRET}",
                                                     events: ["run.completed"]}}]""")
    await drop(api, "a.csv", "email\nann@example.org\n")
    await until(lambda: len(receiver.at("/flaky")) == 2)
    first, second = receiver.at("/flaky")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] and first.body == second.body
    assert verify(SECRET, second.headers, second.body)
    assert api.daemon.store is not None
    [event] = await api.daemon.store.events_of("run.completed")
    assert (event.status, event.attempts) == ("delivered", 2)


async def test_kill_9_with_deliveries_and_events_pending_loses_none(
        tmp_path: Path, receiver: Receiver, daemons: list[Daemon]) -> None:
    receiver.script["/ingest"] = [503]
    receiver.script["/events"] = [503]
    (tmp_path / "spaces" / "demo" / "inbox").mkdir(parents=True)
    config = write(tmp_path, "feedd.yaml", f"""state_dir: ./var
log: {{level: info, format: json}}
sftp: {{listen: "127.0.0.1:0", spaces_dir: ./spaces, settle: 200ms, scan_interval: 1s}}
http: {{listen: "127.0.0.1:0"}}
schemas: {{contact: {{fields: {{email: {{type: email, required: true}}}}}}}}
connections: {{demo: {{password_hash: "{DEMO_HASH}"}}}}
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv"]
    destinations: [{{type: webhook, url: "{receiver.url('/ingest')}", secret: "{SECRET}"}}]
webhooks: [{{url: "{receiver.url('/events')}", secret: "{SECRET}", events: ["run.completed", "run.delivered"]}}]
""")
    first = Daemon(config)
    daemons.append(first)
    first.wait_log("ready")
    for i in range(3):
        (tmp_path / "spaces" / "demo" / "inbox" / f"f{i}.csv").write_text(f"email\nu{i}@example.org\n")
    await until(lambda: len({r.headers["webhook-id"] for r in receiver.at("/ingest")}) == 3, 30)
    first.stop()  # SIGKILL: deliveries and events are pending, mid-backoff
    receiver.script["/ingest"] = [200]
    receiver.script["/events"] = [200]
    second = Daemon(config)
    daemons.append(second)
    second.wait_log("ready")
    await until(lambda: len([r for r in receiver.at("/events") if json.loads(r.body)["type"] == "run.delivered"])
                >= 3, 40)
    second.stop()
    delivered_ids = [r.headers["webhook-id"] for r in receiver.at("/ingest")]
    assert len(set(delivered_ids)) == 3  # one key per run's batch, every run delivered
    events = [(json.loads(r.body)["type"], r.headers["webhook-id"]) for r in receiver.at("/events")]
    assert {t for t, _ in events} == {"run.completed", "run.delivered"}
    assert len({i for t, i in events if t == "run.delivered"}) == 3
    assert len({i for t, i in events if t == "run.completed"}) == 3  # queued before the kill, sent after


async def test_an_event_redirect_is_not_followed(start_api: Callable[..., Any], receiver: Receiver,
                                                 elsewhere: Receiver) -> None:
    receiver.redirect["/moved"] = elsewhere.url("/stolen")
    api: Api = await start_api(extra=f"""webhooks: [{{url: "{receiver.url('/moved')}", secret: "{SECRET}",
                                                     events: ["run.completed"]}}]""")
    await drop(api, "a.csv", "email\nann@example.org\n")
    await until(lambda: len(receiver.at("/moved")) >= 1)
    assert api.daemon.store is not None
    store = api.daemon.store
    event = None
    for _ in range(400):
        [event] = await store.events_of("run.completed")
        if event.attempts >= 1:
            break
        await asyncio.sleep(0.05)
    assert event is not None and event.attempts >= 1 and event.status != "delivered", event
    assert "307" in (event.last_error or "") and elsewhere.url("/stolen") in (event.last_error or ""), event
    assert elsewhere.got == []
