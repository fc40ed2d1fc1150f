"""Two feedd nodes on one PostgreSQL store and one state_dir, as behind a load balancer that sends each HTTP
request to either: a multipart upload's parts go through both and all are kept, completes through both make
one run, tus chunks go through both, and the same content taken by both at once is one original and one
duplicate."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytest.importorskip("psycopg", reason="the postgresql extra is not installed: pip install -e '.[test]'")

from feedd.config import load_config
from feedd.daemon import Daemon
from feedd.model import RunStatus
from tests.helpers import DEMO_HASH, eventually, write
from tests.http.conftest import ADMIN_KEY, CONFIG, DEMO_KEY, Api, sha
from tests.sftp.conftest import host_key

__all__ = ["host_key"]

STORE = 'store: {type: postgresql, dsn: "${FEEDD_TEST_DSN}"}\n'


@pytest.fixture
async def nodes(tmp_path: Path, pg_dsn: str, host_key: Path) -> AsyncIterator[tuple[Api, Api]]:
    """Two nodes with one config: one store, one state_dir and spaces_dir. Both are up before any upload."""
    text = CONFIG + STORE
    for name, value in {"host_key": str(host_key), "hash": DEMO_HASH, "admin": sha(ADMIN_KEY), "demo": sha(DEMO_KEY),
                        "http_extra": "", "pipeline_extra": "", "sftp_extra": ""}.items():
        text = text.replace(f"@{name}@", value)
    path = write(tmp_path, "feedd.yaml", text)
    started: list[tuple[Daemon, aiohttp.ClientSession]] = []
    try:
        for _ in range(2):
            daemon = Daemon(load_config(path, env={"FEEDD_TEST_DSN": pg_dsn}), drain_seconds=2, workers=1)
            await daemon.start()
            started.append((daemon, aiohttp.ClientSession()))
        apis = [Api(d, f"http://127.0.0.1:{d.http.addresses[0].port}", s, path)  # type: ignore[union-attr]
                for d, s in started]
        yield apis[0], apis[1]
    finally:
        for daemon, session in started:
            await session.close()
            await daemon.stop()


def orders(first: int, count: int) -> list[dict[str, Any]]:
    return [{"order_id": f"O{i:05d}", "amount": f"{i}.50"} for i in range(first, first + count)]


async def test_a_multipart_upload_through_both_nodes_keeps_every_part_and_becomes_one_run(
        nodes: tuple[Api, Api]) -> None:
    a, b = nodes
    parts = 8
    status, upload = await a.call("POST", "/outbound/uploads", json={
        "connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": parts})
    assert status == 201, upload
    uid = upload["uploadId"]
    # every part at once, odd ones through one node and even ones through the other
    answers = await asyncio.gather(*((a, b)[n % 2].call("PUT", f"/outbound/uploads/{uid}/parts/{n}",
                                                         data=json.dumps(orders(n * 100, 25)))
                                     for n in range(1, parts + 1)))
    assert [s for s, _ in answers] == [200] * parts, answers
    status, seen = await b.call("GET", f"/outbound/uploads/{uid}")
    assert seen["partsReceived"] == list(range(1, parts + 1)) and seen["records"] == parts * 25
    # completed through both at once: one run, and both are told it (or one is told it is done already)
    listed = {"parts": [{"partNumber": n} for n in range(1, parts + 1)]}
    completes = await asyncio.gather(a.call("POST", f"/outbound/uploads/{uid}/complete", json=listed),
                                     b.call("POST", f"/outbound/uploads/{uid}/complete", json=listed))
    ok = [body for status, body in completes if status == 200]
    assert ok and all(status in (200, 409) for status, _ in completes), completes
    assert len({body["runId"] for body in ok}) == 1
    runs = await a.runs()
    assert [r.run_id for r in runs] == [ok[0]["runId"]]
    run = await b.wait_run(ok[0]["runId"])
    assert run["status"] == "delivered" and run["counts"]["valid"] == parts * 25, run
    status, seen = await a.call("GET", f"/outbound/uploads/{uid}")
    assert (seen["state"], seen["runId"]) == ("completed", ok[0]["runId"])


def _tus_headers(**extra: str) -> dict[str, str]:
    meta = {"connection": "demo", "pipeline": "demo-contacts", "filename": "people.csv"}
    return {"Authorization": f"Bearer {ADMIN_KEY}", "Tus-Resumable": "1.0.0",
            "Upload-Metadata": ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items()),
            **extra}


async def test_tus_chunks_go_through_either_node_one_patch_at_a_time(nodes: tuple[Api, Api]) -> None:
    a, b = nodes
    body = b"email\n" + b"".join(f"p{i}@example.org\n".encode() for i in range(200))
    async with a.session.post(f"{a.url}/tus/", headers=_tus_headers(**{"Upload-Length": str(len(body))})) as r:
        assert r.status == 201
        path = r.headers["Location"].split("/tus/", 1)[1]
    octets = {"Content-Type": "application/offset+octet-stream"}
    async with a.session.patch(f"{a.url}/tus/{path}", data=body[:100],
                               headers=_tus_headers(**octets, **{"Upload-Offset": "0"})) as r:
        assert r.status == 204 and r.headers["Upload-Offset"] == "100"
    # the same next chunk through both nodes at once: one takes it, the other is refused
    answers = []
    for node in (a, b):
        answers.append(node.session.patch(f"{node.url}/tus/{path}", data=body[100:300],
                                          headers=_tus_headers(**octets, **{"Upload-Offset": "100"})))
    statuses = []
    for response in await asyncio.gather(*answers):
        statuses.append(response.status)
        response.release()
    assert sorted(statuses) in ([204, 409], [204, 423]), statuses
    async with b.session.head(f"{b.url}/tus/{path}", headers=_tus_headers()) as r:
        assert r.headers["Upload-Offset"] == "300"
    async with b.session.patch(f"{b.url}/tus/{path}", data=body[300:],
                               headers=_tus_headers(**octets, **{"Upload-Offset": "300"})) as r:
        assert r.status == 204, await r.text()
        run_id = r.headers["Feedd-Run-Id"]
    run = await a.wait_run(run_id)
    assert run["source"]["size"] == len(body) and run["counts"]["valid"] == 200, run


async def test_the_same_content_through_both_nodes_at_once_is_one_original_and_one_duplicate(
        nodes: tuple[Api, Api]) -> None:
    a, b = nodes
    files = [b"email\n" + f"n{i}@example.org\n".encode() for i in range(6)]

    async def push(node: Api, content: bytes) -> str:
        headers = _tus_headers(**{"Upload-Length": str(len(content)),
                                  "Content-Type": "application/offset+octet-stream"})
        async with node.session.post(f"{node.url}/tus/", data=content, headers=headers) as r:
            assert r.status == 201, await r.text()
            return r.headers["Feedd-Run-Id"]

    ids = await asyncio.gather(*(push(node, content) for content in files for node in (a, b)))
    assert len(set(ids)) == len(ids)

    async def all_settled() -> list[Any]:
        runs = await a.runs()
        return runs if len(runs) == len(ids) and all(
            r.status in (RunStatus.COMPLETED, RunStatus.DELIVERED, RunStatus.FAILED) for r in runs) else []

    runs = await eventually(all_settled, what="every run finished")
    by_content: dict[str, list[Any]] = {}
    for run in runs:
        by_content.setdefault(run.source.sha256, []).append(run)
    assert len(by_content) == len(files)
    for pair in by_content.values():
        [original] = [r for r in pair if r.duplicate_of is None]
        [duplicate] = [r for r in pair if r.duplicate_of is not None]
        assert original.status is RunStatus.COMPLETED and original.counts.valid == 1, original
        assert duplicate.duplicate_of == original.run_id
        assert duplicate.status is RunStatus.FAILED and duplicate.error is not None
        assert duplicate.error.code == "duplicate_input"
