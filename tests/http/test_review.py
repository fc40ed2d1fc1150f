"""Runs that need review, end to end: partners drop files over SFTP into a real daemon, a pipeline's
`review` sends what it cannot settle to `needs_review`, and an admin looks (headers, preview) and decides
(approve with a remembered mapping, or reject with a message the partner reads) over the HTTP API."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from feedd.config import load_config
from feedd.errors import ConfigError
from tests.delivery.conftest import Receiver, receiver
from tests.helpers import DEMO_HASH, Daemon, eventually, write
from tests.http.conftest import ADMIN_KEY, CONFIG, DEMO_KEY, Api, sha
from tests.http.test_runs import drop
from tests.sftp.conftest import fetch_outbox

__all__ = ["receiver"]

REVIEWED = """review: [unmapped_required_field, too_many_errors, schema_drift]
    destinations: [{type: directory, path: ./out}]"""


async def conforms(api: Api, name: str, answer: Any) -> None:
    """`answer` is what /openapi.json says a `name` is."""
    _, doc = await api.call("GET", "/openapi.json", key=None)
    jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]}).validate(
        answer
    )


async def waiting(api: Api, count: int = 1) -> list[dict[str, Any]]:
    """The runs in `needs_review`, once there are `count` of them (oldest first)."""

    async def look() -> list[dict[str, Any]] | None:
        status, page = await api.call("GET", "/runs?status=needs_review")
        assert status == 200, page
        return list(reversed(page["data"])) if len(page["data"]) >= count else None

    return await eventually(look, what=f"{count} runs in needs_review")  # type: ignore[no-any-return]


async def latest(api: Api, name: str) -> dict[str, Any]:
    """The finished run of the file `name`."""

    async def look() -> str | None:
        _, page = await api.call("GET", "/runs")
        found = [r for r in page["data"] if r["source"]["name"].endswith(name)]
        return found[0]["runId"] if found else None

    return await api.wait_run(await eventually(look, what=f"a run of {name}"))


def out_files(api: Api) -> list[str]:
    folder = api.config_path.parent / "out"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def outbox(api: Api) -> dict[str, bytes]:
    """The partner's outbox as the partner sees it, over SFTP (from a thread: the daemon shares this loop)."""
    return await asyncio.to_thread(fetch_outbox, api.sftp_port)


async def test_a_renamed_required_column_waits_then_approve_remembers_the_mapping(
    start_api: Callable[..., Any],
    receiver: Receiver,
) -> None:
    api: Api = await start_api(pipeline_extra=REVIEWED, extra=f'webhooks:\n  - {{url: "{receiver.url("/events")}"}}\n')
    await drop(api, "first.csv", "E-Mail Addr\nann@example.org\nbob@example.org\n")
    [held] = await waiting(api)
    run_id = held["runId"]
    assert held["review"]["reason"] == "unmapped_required_field"
    assert held["review"]["details"] == {"fields": [{"field": "email", "configured": None, "closest": ["E-Mail Addr"]}]}
    assert held["error"] is None and held["deliveries"] == []

    # the event links into the console's review page, on the port as bound
    async def event() -> dict[str, Any] | None:
        found = [json.loads(r.body) for r in receiver.at("/events")]
        return next((e for e in found if e["type"] == "run.needs_review"), None)

    sent = await eventually(event, what="run.needs_review")
    assert sent["data"]["runId"] == run_id
    assert sent["data"]["reviewUrl"] == f"{api.url}/ui/runs/{run_id}/review"

    status, sample = await api.call("GET", f"/runs/{run_id}/input/headers")
    assert status == 200, sample
    assert sample["headers"] == ["E-Mail Addr"]
    assert sample["rows"] == [{"row": 2, "cells": ["ann@example.org"]}, {"row": 3, "cells": ["bob@example.org"]}]
    assert sample["unmapped"] == {"email": {"configured": None, "closest": ["E-Mail Addr"]}}
    await conforms(api, "InputSample", sample)
    await conforms(api, "Run", held)

    # a preview changes nothing: the run, the outputs, the mapping memory
    _, before = await api.call("GET", f"/runs/{run_id}")
    status, seen = await api.call("POST", f"/runs/{run_id}/preview", json={"mapping": {"email": "E-Mail Addr"}})
    assert status == 200, seen
    assert seen["status"] == "completed" and seen["counts"] == {"rows": 2, "valid": 2, "invalid": 0}
    assert seen["mapping"]["email"]["source"] == "E-Mail Addr" and seen["mapping"]["email"]["reason"] == "review"
    assert seen["errors"] == [] and seen["error"] is None
    await conforms(api, "Preview", seen)
    status, seen = await api.call("POST", f"/runs/{run_id}/preview", json={"mapping": {"emial": "E-Mail Addr"}})
    assert status == 422 and "did you mean 'email'" in seen["error"]["details"][0]["message"], seen
    _, after = await api.call("GET", f"/runs/{run_id}")
    assert after == before
    assert out_files(api) == [] and "first.csv.report.json" not in (await outbox(api))

    status, queued = await api.call(
        "POST",
        f"/runs/{run_id}/review",
        json={"decision": "approve", "mapping": {"email": "E-Mail Addr"}, "remember": True},
    )
    assert status == 200, queued
    assert queued["status"] == "queued" and queued["review"]["decision"]["actor"] == "admin"
    await conforms(api, "Run", queued)
    done = await api.wait_run(run_id)
    assert done["status"] == "delivered", done
    assert done["counts"] == {"rows": 2, "valid": 2, "invalid": 0, "warned": 0}
    assert done["mappingReasons"]["email"]["reason"] == "review"
    _, records = await api.call("GET", f"/runs/{run_id}/records")
    assert [json.loads(line) for line in records.splitlines()] == [
        {"email": "ann@example.org"},
        {"email": "bob@example.org"},
    ]
    assert len(out_files(api)) == 1
    assert json.loads((await outbox(api))["first.csv.report.json"])["status"] == "completed"

    # the next file with the same headers maps by itself, without review
    await drop(api, "second.csv", "E-Mail Addr\ncid@example.org\n")
    second = await latest(api, "second.csv")
    assert second["status"] == "delivered", second
    assert second["mappingReasons"]["email"]["reason"] == "remembered"
    assert second["review"] is None

    # decided once: a second decision, or one on a run that is not waiting, is refused
    status, body = await api.call("POST", f"/runs/{run_id}/review", json={"decision": "approve"})
    assert status == 409 and body["error"]["code"] == "wrong_state"
    status, body = await api.call(
        "POST", f"/runs/{second['runId']}/review", json={"decision": "reject", "message": "no"}
    )
    assert status == 409

    status, audit = await api.call("GET", "/audit")
    [entry] = [e for e in audit["data"] if e["kind"] == "run"]
    assert (entry["action"], entry["name"], entry["actor"]) == ("approve", run_id, "admin")
    assert entry["before"]["reason"] == "unmapped_required_field"
    assert entry["after"]["mapping"] == {"email": "E-Mail Addr"} and entry["after"]["remember"] is True


async def test_approve_without_remember_keeps_the_mapping_to_that_run(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(pipeline_extra=REVIEWED)
    await drop(api, "one.csv", "Contact\nann@example.org\n")
    [held] = await waiting(api)
    # approved while the pipeline is switched off: held like new inputs, until it is on again
    status, _ = await api.call("PATCH", "/pipelines/demo-contacts", json={"active": False})
    assert status == 200
    status, approved = await api.call(
        "POST", f"/runs/{held['runId']}/review", json={"decision": "approve", "mapping": {"email": "Contact"}}
    )
    assert (status, approved["status"]) == (200, "held"), approved
    status, _ = await api.call("PATCH", "/pipelines/demo-contacts", json={"active": True})
    assert status == 200
    assert (await api.wait_run(held["runId"]))["status"] == "delivered"
    await drop(api, "two.csv", "Contact\nbob@example.org\n")
    await waiting(api)  # not remembered: the next file waits for a person again


async def test_reject_fails_the_run_and_the_partner_reads_the_message(
    start_api: Callable[..., Any], receiver: Receiver
) -> None:
    api: Api = await start_api(
        pipeline_extra=REVIEWED,
        http_extra='public_url: "https://feedd.example.org/"',
        extra=f'webhooks:\n  - {{url: "{receiver.url("/events")}"}}\n',
    )
    await drop(api, "wrong.csv", "Kontakt\nann@example.org\n")
    [held] = await waiting(api)
    run_id = held["runId"]

    async def link() -> str | None:
        found = [json.loads(r.body) for r in receiver.at("/events")]
        return next((e["data"]["reviewUrl"] for e in found if e["type"] == "run.needs_review"), None)

    assert await eventually(link, what="run.needs_review") == f"https://feedd.example.org/ui/runs/{run_id}/review"

    # an app key may read runs, not review them
    for method, path, body in (
        ("GET", "input/headers", None),
        ("POST", "preview", {}),
        ("POST", "review", {"decision": "reject", "message": "no"}),
    ):
        status, answer = await api.call(method, f"/runs/{run_id}/{path}", key=DEMO_KEY, json=body)
        assert status == 403, (path, answer)
    status, answer = await api.call("POST", f"/runs/{run_id}/review", json={"decision": "reject"})
    assert status == 400 and answer["error"]["message"] == "message: required"
    status, answer = await api.call("POST", f"/runs/{run_id}/review", json={"decision": "maybe"})
    assert status == 400
    _, still = await api.call("GET", f"/runs/{run_id}")
    assert still["status"] == "needs_review"

    message = "We expect the column 'email', not 'Kontakt': please rename it and send the file again."
    status, failed = await api.call("POST", f"/runs/{run_id}/review", json={"decision": "reject", "message": message})
    assert status == 200, failed
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "rejected_by_reviewer", "message": message}
    await conforms(api, "Run", failed)
    report = json.loads((await outbox(api))["wrong.csv.report.json"])
    assert report["status"] == "failed" and report["message"] == message
    assert report["error"]["code"] == "rejected_by_reviewer"
    assert out_files(api) == []
    status, _ = await api.call("POST", f"/runs/{run_id}/review", json={"decision": "reject", "message": "again"})
    assert status == 409
    _, audit = await api.call("GET", "/audit")
    [entry] = [e for e in audit["data"] if e["kind"] == "run"]
    assert (entry["action"], entry["name"], entry["after"]["message"]) == ("reject", run_id, message)

    async def failed_event() -> bool:
        return any(json.loads(r.body)["type"] == "run.failed" for r in receiver.at("/events"))

    await eventually(failed_event, what="run.failed")


async def test_too_many_errors_and_drift_wait_with_their_details(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(pipeline_extra=REVIEWED + "\n    max_error_rate: 0.3")
    await drop(api, "good.csv", "email\nann@example.org\n")
    assert (await latest(api, "good.csv"))["status"] == "delivered"

    await drop(api, "bad.csv", "email\nbob@example.org\nnot-an-email\nnor-this\n")
    [held] = await waiting(api)
    assert held["review"]["reason"] == "too_many_errors"
    assert held["review"]["details"] == {"rows": 3, "valid": 1, "invalid": 2, "rate": 0.6667, "maxErrorRate": 0.3}
    assert held["counts"] == {"rows": 3, "valid": 1, "invalid": 2, "warned": 0} and len(held["errors"]) == 2
    await conforms(api, "Run", held)
    status, rejects = await api.call("GET", f"/runs/{held['runId']}/rejects")
    assert status == 200 and [json.loads(line)["row"] for line in rejects.splitlines()] == [3, 4]
    status, _ = await api.call("GET", f"/runs/{held['runId']}/records")
    assert status == 409, "not output while it waits"
    # approving accepts the valid rows (the preview says so first)
    status, seen = await api.call("POST", f"/runs/{held['runId']}/preview", json={})
    assert (status, seen["status"], seen["counts"]["valid"]) == (200, "completed", 1), seen
    status, seen = await api.call("POST", f"/runs/{held['runId']}/preview", json={"max_error_rate": 0.3})
    assert (status, seen["status"], seen["error"]["code"]) == (200, "failed", "too_many_errors"), seen
    await api.call("POST", f"/runs/{held['runId']}/review", json={"decision": "approve"})
    done = await api.wait_run(held["runId"])
    assert done["status"] == "delivered" and done["counts"]["valid"] == 1, done

    await drop(api, "wider.csv", "email,name\ncid@example.org,Cid\n")
    [held] = await waiting(api)
    assert held["review"]["reason"] == "schema_drift"
    assert held["review"]["details"] == {"added": ["name"], "removed": []}
    await api.call("POST", f"/runs/{held['runId']}/review", json={"decision": "approve"})
    assert (await api.wait_run(held["runId"]))["status"] == "delivered"


async def test_needs_review_rests_across_a_restart(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(pipeline_extra=REVIEWED)
    await drop(api, "held.csv", "Kontakt\nann@example.org\n")
    [held] = await waiting(api)
    status, answer = await api.call("POST", f"/runs/{held['runId']}/retry")
    assert status == 409 and "needs review" in answer["error"]["message"]
    await api.daemon.stop()

    again: Api = await start_api(pipeline_extra=REVIEWED)
    await drop(again, "other.csv", "email\nbob@example.org\n")  # the runner works...
    assert (await latest(again, "other.csv"))["status"] == "delivered"
    _, still = await again.call("GET", f"/runs/{held['runId']}")  # ...and leaves the waiting run alone
    assert still["status"] == "needs_review" and still["review"] == held["review"]
    assert still["finishedAt"] == held["finishedAt"], "not processed again"
    status, _ = await again.call(
        "POST", f"/runs/{held['runId']}/review", json={"decision": "approve", "mapping": {"email": "Kontakt"}}
    )
    assert status == 200
    assert (await again.wait_run(held["runId"]))["status"] == "delivered"


async def test_without_review_the_run_fails_as_before(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api()
    await drop(api, "plain.csv", "Kontakt\nann@example.org\n")
    run = await latest(api, "plain.csv")
    assert run["status"] == "failed" and run["error"]["code"] == "unmapped_required_field"
    assert run["review"] is None
    assert json.loads((await outbox(api))["plain.csv.report.json"])["error"]["code"] == "unmapped_required_field"
    status, answer = await api.call("POST", f"/runs/{run['runId']}/review", json={"decision": "approve"})
    assert status == 409, answer


def test_an_unknown_review_reason_is_a_config_error_with_a_hint(tmp_path: Path) -> None:
    text = CONFIG.replace("@pipeline_extra@", "review: [unmaped_required_field]")
    for name in ("host_key", "hash", "admin", "demo", "http_extra", "sftp_extra"):
        text = text.replace(f"@{name}@", "0" * 64 if name in ("admin", "demo") else "")
    (tmp_path / "feedd.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "feedd.yaml", env={})
    [issue] = [i for i in caught.value.issues if "review" in i.path]
    assert issue.path == "pipelines.demo-contacts.review[0]"
    assert "did you mean 'unmapped_required_field'" in issue.message


def test_a_waiting_run_survives_kill_9(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "feedd.yaml",
        f"""\
state_dir: ./var
log: {{level: debug, format: json}}
sftp: {{listen: "127.0.0.1:0", settle: 300ms}}
http:
  listen: "127.0.0.1:0"
  api_keys: [{{name: admin, key_sha256: "{sha(ADMIN_KEY)}", role: admin}}]
schemas:
  contact: {{fields: {{email: {{type: email, required: true}}}}}}
connections:
  demo: {{password_hash: "{DEMO_HASH}"}}
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv"]
    review: [unmapped_required_field]
""",
    )
    first = Daemon(config)
    try:
        first.http_port()
        inbox = tmp_path / "var" / "spaces" / "demo" / "inbox"
        (inbox / "copied.csv").write_text("Kontakt\nann@example.org\n")  # a file drop (not over SFTP)
        run_id = first.wait_log("run.finished", status="needs_review")["run_id"]
    finally:
        first.stop()  # kill -9, workers included
    second = Daemon(config)
    try:
        base = f"http://127.0.0.1:{second.http_port()}"
        second.wait_log("ready")

        def call(method: str, path: str, body: Any = None) -> Any:
            request = urllib.request.Request(  # noqa: S310 - loopback only
                base + path,
                method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback only
                return json.load(answer)

        assert call("GET", f"/runs/{run_id}")["status"] == "needs_review"
        assert not [e for e in second.lines if e.get("event") == "run.resumed"]
        approved = call("POST", f"/runs/{run_id}/review", {"decision": "approve", "mapping": {"email": "Kontakt"}})
        assert approved["status"] == "queued"
        assert second.wait_log("run.finished", run_id=run_id)["status"] == "completed"
    finally:
        second.stop()
