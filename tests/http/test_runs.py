"""The runs API and the config views over real HTTP, with runs made by real SFTP drops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncssh
from aiohttp import web

from feedd.config import load_config
from feedd.daemon import Daemon
from tests.helpers import DEMO_PASSWORD
from tests.http.conftest import ADMIN_KEY, DEMO_KEY, Api


async def drop(api: Api, name: str, text: str) -> None:
    async with asyncssh.connect("127.0.0.1", api.sftp_port, username="demo", password=DEMO_PASSWORD,
                                known_hosts=None, client_keys=None) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open(f"/inbox/{name}", "wb") as f:
            await f.write(text.encode())


async def run_ids(api: Api, count: int, within: float = 20.0) -> list[str]:
    for _ in range(int(within / 0.05)):
        status, page = await api.call("GET", "/runs?limit=1000")
        assert status == 200
        done = [r for r in page["data"] if r["status"] in ("completed", "delivered", "failed", "held")]
        if len(done) >= count:
            return [r["runId"] for r in page["data"]]
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {count} runs: {page}")


async def test_list_filter_page_get_records_rejects_ack(api: Api) -> None:
    for i in range(3):
        await drop(api, f"c{i}.csv", f"email\nann{i}@example.org\nbroken-{i}\n")
    ids = await run_ids(api, 3)
    status, first = await api.call("GET", "/runs?limit=2")
    assert status == 200 and len(first["data"]) == 2 and first["nextCursor"]
    status, second = await api.call("GET", f"/runs?limit=2&cursor={first['nextCursor']}")
    assert len(second["data"]) == 1 and second["nextCursor"] is None
    assert [r["runId"] for r in first["data"] + second["data"]] == ids  # newest first, each once
    status, run = await api.call("GET", f"/runs/{ids[0]}")
    assert status == 200 and run["counts"] == {"rows": 2, "valid": 1, "invalid": 1, "warned": 0}
    assert run["errors"][0]["row"] == 3 and run["errors"][0]["field"] == "email"
    status, text = await api.call("GET", f"/runs/{ids[0]}/records")
    assert status == 200 and [json.loads(x) for x in text.splitlines()] == [{"email": "ann2@example.org"}]
    status, text = await api.call("GET", f"/runs/{ids[0]}/rejects")
    [reject] = [json.loads(x) for x in text.splitlines()]
    assert reject["row"] == 3 and reject["raw"] == {"email": "broken-2"} and reject["errors"][0]["code"] == "type"
    status, page = await api.call("GET", "/runs?acknowledged=false&connection=demo&status=completed")
    assert status == 200 and len(page["data"]) == 3
    status, acked = await api.call("POST", f"/runs/{ids[0]}/ack")
    assert status == 200 and acked["acknowledgedAt"]
    _, page = await api.call("GET", "/runs?acknowledged=false")
    assert ids[0] not in [r["runId"] for r in page["data"]] and len(page["data"]) == 2
    _, page = await api.call("GET", "/runs?acknowledged=true")
    assert [r["runId"] for r in page["data"]] == [ids[0]]


async def test_run_errors_and_scoping(api: Api) -> None:
    await drop(api, "a.csv", "email\nann@example.org\n")
    [rid] = await run_ids(api, 1)
    for path, want in (("/runs?status=bogus", 400), ("/runs?limit=0", 400), ("/runs?limit=abc", 400),
                       ("/runs?cursor=../../x", 400), ("/runs?acknowledged=maybe", 400),
                       ("/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV", 404), ("/runs/nope", 404),
                       ("/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/records", 404), ("/runs?connection=acme", 200)):
        status, body = await api.call("GET", path)
        assert status == want, (path, body)
    status, _ = await api.call("GET", f"/runs/{rid}", key=None)
    assert status == 401
    # a key scoped to another connection: 403 on the run, and lists without it
    status, body = await api.call("GET", "/runs?connection=acme", key=DEMO_KEY)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, page = await api.call("GET", "/runs", key=DEMO_KEY)
    assert [r["runId"] for r in page["data"]] == [rid]


async def test_retry_reprocesses_and_redelivers(start_api: Callable[..., Any]) -> None:
    answers = [410]  # the receiver first says Gone (a permanent failure), then accepts
    got: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(status=answers[0])

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        api: Api = await start_api(pipeline_extra=f'destinations: [{{type: webhook, url: "http://127.0.0.1:{port}/hook"}}]')
        await drop(api, "a.csv", "email\nann@example.org\n")
        [rid] = await run_ids(api, 1)
        run: dict[str, Any] = {}
        for _ in range(200):
            _, run = await api.call("GET", f"/runs/{rid}")
            if run["deliveries"] and run["deliveries"][0]["status"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert run["status"] == "completed" and run["deliveries"][0]["status"] == "failed"
        assert "410" in run["deliveries"][0]["lastError"]
        answers[0] = 200
        status, run = await api.call("POST", f"/runs/{rid}/retry")
        assert status == 200 and run["deliveries"][0]["status"] == "pending", run
        run = await api.wait_run(rid)
        for _ in range(200):
            _, run = await api.call("GET", f"/runs/{rid}")
            if run["status"] == "delivered":
                break
            await asyncio.sleep(0.05)
        assert run["status"] == "delivered" and run["deliveries"][0]["attempts"] == 2
        assert [json.loads(line) for line in got[-1].splitlines()] == [{"email": "ann@example.org"}]
        status, body = await api.call("POST", f"/runs/{rid}/retry")
        assert (status, body["error"]["code"]) == (409, "wrong_state")
        status, run = await api.call("POST", f"/runs/{rid}/retry", json={"reprocess": True})
        assert status == 200 and run["status"] == "queued"
        for _ in range(200):
            _, run = await api.call("GET", f"/runs/{rid}")
            if run["status"] == "delivered":
                break
            await asyncio.sleep(0.05)
        assert run["status"] == "delivered" and run["counts"]["valid"] == 1
        status, body = await api.call("POST", f"/runs/{rid}/retry", json={"reprocess": "yes"})
        assert status == 400
    finally:
        await runner.cleanup()


async def test_config_views_show_no_secrets(api: Api) -> None:
    status, conns = await api.call("GET", "/connections")
    assert status == 200 and [c["name"] for c in conns["data"]] == ["demo", "acme"]
    assert "argon2" not in json.dumps(conns) and conns["data"][0]["password"] is True
    _, conns = await api.call("GET", "/connections", key=DEMO_KEY)
    assert [c["name"] for c in conns["data"]] == ["demo"]
    status, pipes = await api.call("GET", "/pipelines")
    assert {p["name"] for p in pipes["data"]} == {"demo-orders-out", "demo-contacts", "acme-orders-out"}
    status, pipe = await api.call("GET", "/pipelines/demo-orders-out")
    assert status == 200 and pipe["direction"] == "outbound" and pipe["destinations"] == [
        {"type": "outbox", "key": "outbox"}]
    status, _ = await api.call("GET", "/pipelines/acme-orders-out", key=DEMO_KEY)
    assert status == 403
    status, _ = await api.call("GET", "/pipelines/nope")
    assert status == 404
    status, got = await api.call("GET", "/pipelines/demo-contacts/mapping-suggestions?headers=E-Mail,Name")
    assert status == 200 and got["suggestions"]["email"] == {"source": "E-Mail", "score": 0.909, "reason": "similar"}
    status, got = await api.call("GET", "/pipelines/demo-contacts/mapping-suggestions?headers=Name")
    assert got["suggestions"] == {} and "email" in got["unmapped"]
    status, _ = await api.call("GET", "/pipelines/demo-contacts/mapping-suggestions")
    assert status == 400


async def test_inactive_pipeline_holds_runs_and_reactivation_releases_them_in_order(
        start_api: Callable[..., Any]) -> None:
    api: Api = await start_api()
    status, pipe = await api.call("PATCH", "/pipelines/demo-contacts", json={"active": False})
    assert status == 200 and pipe["active"] is False
    for i in range(3):
        await drop(api, f"h{i}.csv", f"email\nh{i}@example.org\n")
    ids = await run_ids(api, 3)
    runs = await api.runs()
    assert [r.status for r in runs] == ["held"] * 3
    await asyncio.sleep(0.5)
    assert [r.status for r in await api.runs()] == ["held"] * 3  # nothing processed while inactive
    # the switch survives a restart
    await api.daemon.stop()
    api.daemon = Daemon(load_config(api.config_path, env={}), drain_seconds=2, workers=1)
    await api.daemon.start()
    assert api.daemon.http is not None
    api.url = f"http://127.0.0.1:{api.daemon.http.addresses[0].port}"
    _, pipe = await api.call("GET", "/pipelines/demo-contacts")
    assert pipe["active"] is False
    await asyncio.sleep(0.3)
    assert [r.status for r in await api.runs()] == ["held"] * 3
    status, pipe = await api.call("PATCH", "/pipelines/demo-contacts", json={"active": True})
    assert status == 200 and pipe["released"] == 3
    finished = [await api.wait_run(rid) for rid in reversed(ids)]
    assert all(r["status"] == "completed" for r in finished)
    started = [r["startedAt"] for r in finished]
    assert started == sorted(started)  # released in arrival order
    # Only `active` is a runtime switch an app key may set; changing the object itself needs an admin key,
    # and a pipeline from the file is changed in the file.
    for body, key, expected in (({"active": "no"}, DEMO_KEY, 400), ({"active": True, "name": "x"}, DEMO_KEY, 403),
                                ({}, DEMO_KEY, 403), ({"active": True, "name": "x"}, ADMIN_KEY, 409)):
        status, _ = await api.call("PATCH", "/pipelines/demo-contacts", json=body, key=key)
        assert status == expected, body
    await api.daemon.stop()


async def test_a_config_reload_that_activates_a_pipeline_releases_its_held_runs(
        start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(pipeline_extra="active: false")
    await drop(api, "h.csv", "email\nh@example.org\n")
    await run_ids(api, 1)
    assert [r.status for r in await api.runs()] == ["held"]
    api.config_path.write_text(api.config_path.read_text().replace("active: false", "active: true"))
    assert await api.daemon.reload()
    for _ in range(200):
        if [r.status for r in await api.runs()] == ["completed"]:
            break
        await asyncio.sleep(0.05)
    assert [r.status for r in await api.runs()] == ["completed"]
