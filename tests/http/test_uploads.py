"""Outbound multipart uploads over real HTTP, ending with the partner downloading the file over SFTP."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.http import conftest as http_conftest
from tests.http.conftest import DEMO_KEY, Api
from tests.sftp.conftest import fetch_outbox


def orders(first: int, count: int) -> list[dict[str, Any]]:
    return [{"order_id": f"O{i:05d}", "amount": f"{i}.50", "placed": f"2026-11-0{1 + i % 9}"}
            for i in range(first, first + count)]


async def init(api: Api, total: int = 2, **extra: Any) -> dict[str, Any]:
    status, body = await api.call("POST", "/outbound/uploads", json={
        "connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": total, **extra})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


async def test_the_whole_flow_ends_as_a_csv_the_partner_downloads(api: Api) -> None:
    upload = await init(api, 2)
    assert upload["state"] == "initiated" and upload["totalParts"] == 2 and upload["partsReceived"] == []
    uid = upload["uploadId"]
    part2 = json.dumps(orders(3, 2)).encode()
    status, body = await api.call("PUT", f"/outbound/uploads/{uid}/parts/2", data=part2)
    assert (status, body) == (200, {"partNumber": 2, "records": 2, "etag": hashlib.sha256(part2).hexdigest()})
    # a part sent again replaces the first try
    await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", data=json.dumps(orders(0, 1)))
    status, body = await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", data=json.dumps(orders(0, 3)))
    assert status == 200 and body["records"] == 3
    status, state = await api.call("GET", f"/outbound/uploads/{uid}")
    assert status == 200
    assert {k: state[k] for k in ("state", "partsReceived", "records", "connectionName", "pipelineId")} == {
        "state": "uploading", "partsReceived": [1, 2], "records": 5, "connectionName": "demo",
        "pipelineId": "demo-orders-out"}
    status, done = await api.call("POST", f"/outbound/uploads/{uid}/complete", json={
        "parts": [{"partNumber": 1}, {"partNumber": 2, "etag": body_etag(part2)}]})
    assert status == 200 and done["state"] == "completed" and done["uploadId"] == uid, done
    run = await api.wait_run(done["runId"])
    assert run["status"] == "delivered" and run["direction"] == "outbound", run
    assert run["source"]["kind"] == "upload" and run["counts"] == {"rows": 5, "valid": 5, "invalid": 0, "warned": 0}
    files = await asyncio.to_thread(fetch_outbox, api.sftp_port)
    name = f"orders-{done['runId']}.csv"
    assert [n for n in files if ".spec." not in n] == [name]  # beside the data spec of demo's inbound feed
    rows = list(csv.DictReader(io.StringIO(files[name].decode())))
    assert [r["order_id"] for r in rows] == ["O00000", "O00001", "O00002", "O00003", "O00004"]
    assert rows[0] == {"order_id": "O00000", "amount": "0.50", "placed": "2026-11-01"}
    status, state = await api.call("GET", f"/outbound/uploads/{uid}")
    assert state["state"] == "completed" and state["runId"] == done["runId"]
    # the records as NDJSON over the API, typed
    status, text = await api.call("GET", f"/runs/{done['runId']}/records")
    assert status == 200 and [json.loads(line)["order_id"] for line in text.splitlines()][:2] == ["O00000", "O00001"]


def body_etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_filename_and_output_from_the_upload(api: Api) -> None:
    uid = (await init(api, 1, filename="daily orders.json", output="json"))["uploadId"]
    await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", data=json.dumps(orders(0, 2)))
    _, done = await api.call("POST", f"/outbound/uploads/{uid}/complete", json={"parts": [{"partNumber": 1}]})
    run = await api.wait_run(done["runId"])
    assert run["status"] == "delivered"
    files = await asyncio.to_thread(fetch_outbox, api.sftp_port)
    assert [r["order_id"] for r in json.loads(files["daily orders.json"])] == ["O00000", "O00001"]


async def test_every_error_status(api: Api) -> None:
    uid = (await init(api, 2))["uploadId"]
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", "/outbound/uploads", {"key": None, "json": {}}, 401, "unauthorized"),
        ("POST", "/outbound/uploads", {"key": "wrong", "json": {}}, 401, "unauthorized"),
        ("POST", "/outbound/uploads", {"data": b"{not json"}, 400, "invalid_body"),
        ("POST", "/outbound/uploads", {"json": {"connectionName": "demo", "pipelineId": "demo-orders-out"}},
         400, "totalParts: required"),
        ("POST", "/outbound/uploads", {"json": {"connectionName": "demo", "pipelineId": "demo-orders-out",
                                                "totalParts": "2"}}, 400, "totalParts: expected an integer"),
        ("POST", "/outbound/uploads", {"json": {"connectionName": "acme", "pipelineId": "acme-orders-out",
                                                "totalParts": 1}, "key": DEMO_KEY}, 403, "forbidden"),
        ("POST", "/outbound/uploads", {"json": {"connectionName": "demo", "pipelineId": "demo-contacts",
                                                "totalParts": 1}}, 422, "pipeline_not_outbound"),
        ("POST", "/outbound/uploads", {"json": {"connectionName": "demo", "pipelineId": "acme-orders-out",
                                                "totalParts": 1}}, 422, "pipeline_mismatch"),
        ("POST", "/outbound/uploads", {"json": {"connectionName": "demo", "pipelineId": "nope",
                                                "totalParts": 1}}, 404, "not_found"),
        ("GET", "/outbound/uploads/01ARZ3NDEKTSV4RRFFQ69G5FAV", {}, 404, "not_found"),
        ("GET", "/outbound/uploads/../../etc", {}, 404, "not_found"),
        ("PUT", f"/outbound/uploads/{uid}/parts/3", {"data": b"[]"}, 400, "invalid_part_number"),
        ("PUT", f"/outbound/uploads/{uid}/parts/0", {"data": b"[]"}, 400, "invalid_part_number"),
        ("PUT", f"/outbound/uploads/{uid}/parts/1", {"data": b'[{"a": 1}, 2, {}]'}, 400, "element 1 is not an object"),
        ("PUT", f"/outbound/uploads/{uid}/parts/1", {"data": b'{"a": 1}'}, 400, "must be a JSON array"),
        ("PUT", f"/outbound/uploads/{uid}/parts/1", {"data": b"[{"}, 400, "not valid JSON"),
        ("PUT", f"/outbound/uploads/{uid}/parts/1", {"data": io.BytesIO(b"[" + b"{}," * 400_000 + b"{}]")},
         413, "too_large"),
        ("POST", f"/outbound/uploads/{uid}/complete", {"json": {"parts": [{"partNumber": 1}, {"partNumber": 2}]}},
         422, "never uploaded"),
    ]
    for method, path, kw, want_status, want_text in cases:
        status, body = await api.call(method, path, **kw)
        assert status == want_status, (method, path, status, body)
        assert want_text in json.dumps(body), (path, body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    status, body = await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", data=json.dumps(orders(0, 1)))
    assert status == 200
    etag = body["etag"]
    status, body = await api.call("POST", f"/outbound/uploads/{uid}/complete", json={"parts": [
        {"partNumber": 1, "etag": "0" * 64}]})
    assert status == 422 and body["error"]["code"] in ("missing_parts", "etag_mismatch")
    await api.call("PUT", f"/outbound/uploads/{uid}/parts/2", data=json.dumps(orders(5, 1)))
    status, body = await api.call("POST", f"/outbound/uploads/{uid}/complete", json={"parts": [
        {"partNumber": 1, "etag": "0" * 64}, {"partNumber": 2}]})
    assert (status, body["error"]["code"]) == (422, "etag_mismatch")
    status, body = await api.call("POST", f"/outbound/uploads/{uid}/complete", json={"parts": [
        {"partNumber": 1, "etag": etag}, {"partNumber": 2}]})
    assert status == 200
    for method, path in (("PUT", f"/outbound/uploads/{uid}/parts/1"), ("POST", f"/outbound/uploads/{uid}/abort"),
                         ("POST", f"/outbound/uploads/{uid}/complete")):
        status, body = await api.call(method, path, json=[] if method == "PUT" else {"parts": []})
        assert (status, body["error"]["code"]) == (409, "wrong_state"), (path, body)
    # a key for another connection may not touch this connection's uploads
    status, acme = await api.call("POST", "/outbound/uploads", json={
        "connectionName": "acme", "pipelineId": "acme-orders-out", "totalParts": 1})
    assert status == 201
    for method, path in (("GET", ""), ("PUT", "/parts/1"), ("POST", "/abort")):
        status, body = await api.call(method, f"/outbound/uploads/{acme['uploadId']}{path}", key=DEMO_KEY, json=[])
        assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_abort_deletes_the_parts(api: Api) -> None:
    uid = (await init(api, 3))["uploadId"]
    _, part = await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", data=json.dumps(orders(0, 5)))
    folder = api.daemon.config.state_dir / "uploads" / uid
    assert folder.is_dir() and (folder / f"1.{part['etag']}.json").is_file()
    status, body = await api.call("POST", f"/outbound/uploads/{uid}/abort")
    assert (status, body) == (200, {"uploadId": uid, "state": "aborted"})
    assert not folder.exists()
    status, body = await api.call("GET", f"/outbound/uploads/{uid}")
    assert body["state"] == "aborted"
    assert await api.runs() == []


async def test_stale_uploads_expire(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(http_extra="upload_expire_after: 1s")
    uid = (await init(api, 2))["uploadId"]
    await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", data=json.dumps(orders(0, 1)))
    body: dict[str, Any] = {}
    for _ in range(60):  # the sweeper runs every second here; bounded at ~6 s
        _, body = await api.call("GET", f"/outbound/uploads/{uid}")
        if body["state"] == "aborted":
            break
        await asyncio.sleep(0.1)
    assert body["state"] == "aborted"
    assert not (api.daemon.config.state_dir / "uploads" / uid).exists()


async def test_concurrent_parts_are_all_kept(api: Api) -> None:
    uid = (await init(api, 8))["uploadId"]
    results = await asyncio.gather(*(api.call("PUT", f"/outbound/uploads/{uid}/parts/{n}",
                                              data=json.dumps(orders(n * 10, 10))) for n in range(1, 9)))
    assert all(status == 200 for status, _ in results)
    _, state = await api.call("GET", f"/outbound/uploads/{uid}")
    assert state["partsReceived"] == list(range(1, 9)) and state["records"] == 80


async def test_the_same_records_uploaded_twice_are_delivered_twice(api: Api) -> None:
    runs = []
    for _ in range(2):
        uid = (await init(api, 1))["uploadId"]
        await api.call("PUT", f"/outbound/uploads/{uid}/parts/1", data=json.dumps(orders(0, 2)))
        _, done = await api.call("POST", f"/outbound/uploads/{uid}/complete", json={"parts": [{"partNumber": 1}]})
        runs.append(await api.wait_run(done["runId"]))
    assert [r["status"] for r in runs] == ["delivered", "delivered"]
    assert runs[0]["source"]["sha256"] == runs[1]["source"]["sha256"]


async def test_a_large_upload_is_processed_by_every_idle_worker(start_api: Callable[..., Any]) -> None:
    api = await start_api(workers=2)
    first, second = orders(0, 10_000), orders(10_000, 10_000)
    first[5]["amount"] = second[9_000]["amount"] = "-1.00"
    clash = [*orders(20_000, 9_999), orders(7, 1)[0]]  # repeats an id of part 1
    run_ids = []
    for parts in ([first, second], [first, clash]):
        uid = (await init(api, 2))["uploadId"]
        for n, records in enumerate(parts, 1):
            status, _ = await api.call("PUT", f"/outbound/uploads/{uid}/parts/{n}", data=json.dumps(records))
            assert status == 200
        _, done = await api.call("POST", f"/outbound/uploads/{uid}/complete",
                                 json={"parts": [{"partNumber": 1}, {"partNumber": 2}]})
        run_ids.append(done["runId"])
        run = await api.wait_run(done["runId"])
        assert run["status"] == "delivered", run
        assert run["counts"] == {"rows": 20_000, "valid": 19_998, "invalid": 2, "warned": 0}, run
    assert api.daemon.store is not None
    split, whole = [await api.daemon.store.get_run(r) for r in run_ids]
    assert split is not None and whole is not None
    assert split.meta["stretches"] == 2, "two idle workers took a part each"
    spooled = Path(split.spool_path).read_bytes()
    assert (split.source.sha256, split.source.size) == (hashlib.sha256(spooled).hexdigest(), len(spooled))
    assert json.loads(spooled) == first + second
    assert whole.meta["stretches"] == 1, "an id in both parts: one pass decides which row repeats it"
    assert [(e.row, e.field, e.code) for e in split.errors] == [(6, "amount", "min"), (19_001, "amount", "min")]
    assert [(e.row, e.field, e.code) for e in whole.errors] == [(6, "amount", "min"), (20_000, "order_id", "unique")]
    files = await asyncio.to_thread(fetch_outbox, api.sftp_port)
    rows = list(csv.DictReader(io.StringIO(files[f"orders-{run_ids[0]}.csv"].decode())))
    expected = [r["order_id"] for r in first + second if not r["amount"].startswith("-")]
    assert [r["order_id"] for r in rows] == expected
    assert rows[10_000] == {"order_id": "O10001", "amount": "10001.50", "placed": "2026-11-03"}


def _spawned_children() -> set[int]:
    """This process's children started by multiprocessing's spawn (worker and checker processes)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


async def _big_parts_api(start_api: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setattr(http_conftest, "CONFIG", http_conftest.CONFIG.replace("max_part_size: 1MiB",
                                                                                "max_part_size: 24MiB"))
    return await start_api(workers=0)  # type: ignore[no-any-return]  # no run workers: the checker is the only child


async def _put(api: Api, uid: str, number: int, data: bytes) -> tuple[int, Any]:
    return await api.call("PUT", f"/outbound/uploads/{uid}/parts/{number}", data=io.BytesIO(data))


async def test_a_killed_checker_is_replaced(start_api: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    api = await _big_parts_api(start_api, monkeypatch)
    uid = (await init(api, 2))["uploadId"]
    before = _spawned_children()
    part = json.dumps(orders(0, 5000)).encode()
    assert len(part) > 256 * 1024  # checked in the checker process
    status, body = await _put(api, uid, 1, part)
    assert (status, body["records"]) == (200, 5000), body
    [checker] = _spawned_children() - before
    os.kill(checker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while checker in _spawned_children() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    status, body = await _put(api, uid, 2, part)
    assert (status, body.get("records")) == (200, 5000), body
    status, body = await _put(api, uid, 2, part)  # and the parts after it
    assert (status, body.get("records")) == (200, 5000), body


async def test_a_16_mib_part_is_checked_in_bounded_memory(start_api: Callable[..., Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    api = await _big_parts_api(start_api, monkeypatch)
    uid = (await init(api, 1))["uploadId"]
    before = _spawned_children()
    # many small values per record: the most objects per byte, as a whole-part parse builds them all
    record = json.dumps({"order_id": "O1", "amount": "1.50", **{f"k{k}": [k, None] for k in range(12)}})
    count = 16 * 1024 * 1024 // (len(record) + 1) + 1
    part = ("[" + ",".join([record] * count) + "]").encode()
    assert len(part) >= 16 * 1024 * 1024
    status, body = await _put(api, uid, 1, part)
    assert (status, body.get("records")) == (200, count), body
    [checker] = _spawned_children() - before
    # parsing the whole part at once peaked at about 250 MiB here; checked as a stream, about 50 MiB
    assert _peak_rss_kib(checker) < 150 * 1024, f"the checker peaked at {_peak_rss_kib(checker) // 1024} MiB"
