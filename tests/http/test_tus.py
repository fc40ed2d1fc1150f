"""tus 1.0.0 with the real tuspy client (a resume across a daemon restart included), and a table of raw
requests for every error the protocol defines."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from tusclient import client as tus

from feedd.config import load_config
from feedd.daemon import Daemon
from tests.http.conftest import ADMIN_KEY, DEMO_KEY, Api

CSV = b"email\n" + b"".join(b"user%05d@example.org\n" % i for i in range(3000))  # ~75 KB


def meta(**extra: str) -> dict[str, str]:
    return {"connection": "demo", "pipeline": "demo-contacts", "filename": "people.csv", **extra}


def tus_client(api: Api, key: str = ADMIN_KEY) -> tus.TusClient:
    return tus.TusClient(f"{api.url}/tus/", headers={"Authorization": f"Bearer {key}"})


async def one_completed_run(api: Api) -> list[Any]:
    runs: list[Any] = []
    for _ in range(200):  # bounded: ~10 s
        runs = await api.runs()
        if runs and runs[0].status == "completed":
            break
        await asyncio.sleep(0.05)
    return runs


async def test_tuspy_uploads_in_chunks_with_checksums_and_a_run_follows(api: Api) -> None:
    def upload() -> str:
        uploader = tus_client(api).uploader(file_stream=io.BytesIO(CSV), chunk_size=10_000, metadata=meta(),
                                            upload_checksum=True)
        uploader.upload()
        return str(uploader.url)

    url = await asyncio.to_thread(upload)
    assert url.startswith(f"{api.url}/tus/")
    [run] = await one_completed_run(api)
    assert run.source.kind == "tus" and run.source.name == "people.csv"
    assert run.source.sha256 == hashlib.sha256(CSV).hexdigest() and run.counts.valid == 3000
    async with aiohttp.ClientSession() as s, s.head(url, headers={"Tus-Resumable": "1.0.0",
                                                                 "Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        assert r.status == 200 and r.headers["Upload-Offset"] == str(len(CSV))
        assert r.headers["Cache-Control"] == "no-store"


async def test_resume_after_a_restart_gives_one_run_with_the_right_sha256(
        start_api: Callable[..., Any], tmp_path: Path) -> None:
    api: Api = await start_api()
    data = CSV * 4

    def first_half() -> str:
        uploader = tus_client(api).uploader(file_stream=io.BytesIO(data), chunk_size=50_000, metadata=meta())
        uploader.upload_chunk()
        uploader.upload_chunk()  # 100,000 of ~300,000 bytes, then the client stops
        return str(uploader.url)

    url = await asyncio.to_thread(first_half)
    await api.daemon.stop()
    api.daemon = Daemon(load_config(api.config_path, env={}), drain_seconds=2, workers=1)
    await api.daemon.start()
    assert api.daemon.http is not None
    port = api.daemon.http.addresses[0].port
    new_url = f"http://127.0.0.1:{port}/tus/{url.rsplit('/', 1)[1]}"  # the port changed; the id did not
    api.url = f"http://127.0.0.1:{port}"

    def resume() -> int:
        uploader = tus_client(api).uploader(file_stream=io.BytesIO(data), chunk_size=50_000, url=new_url)
        offset = int(uploader.offset)
        uploader.upload()
        return offset

    assert await asyncio.to_thread(resume) == 100_000
    [run] = await one_completed_run(api)
    assert run.source.sha256 == hashlib.sha256(data).hexdigest() and run.counts.valid == 12_000
    await api.daemon.stop()


async def test_every_protocol_error(api: Api) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    v = {"Tus-Resumable": "1.0.0", **auth}

    def md(**kw: str) -> str:
        return ",".join(f"{k} {base64.b64encode(x.encode()).decode()}" for k, x in meta(**kw).items())

    async with aiohttp.ClientSession() as s:
        async def call(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> aiohttp.ClientResponse:
            async with s.request(method, api.url + path, headers=headers, data=body) as r:
                await r.read()
                return r

        r = await call("OPTIONS", "/tus/", {})
        assert r.status == 204 and r.headers["Tus-Version"] == "1.0.0"
        assert set(r.headers["Tus-Extension"].split(",")) == {"creation", "creation-with-upload", "termination",
                                                               "expiration", "checksum"}
        assert r.headers["Tus-Checksum-Algorithm"] == "sha256,sha1,md5" and int(r.headers["Tus-Max-Size"]) > 0
        r = await call("POST", "/tus/", {**auth, "Upload-Length": "10", "Upload-Metadata": md()})
        assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0"
        r = await call("POST", "/tus/", {**v, "Tus-Resumable": "0.2.2", "Upload-Length": "10", "Upload-Metadata": md()})
        assert r.status == 412
        r = await call("POST", "/tus/", {"Tus-Resumable": "1.0.0", "Upload-Length": "10", "Upload-Metadata": md()})
        assert r.status == 401
        r = await call("POST", "/tus/", {**v, "Upload-Length": str(6 * 1024**3), "Upload-Metadata": md()})
        assert r.status == 413
        r = await call("POST", "/tus/", {**v, "Upload-Length": "10", "Upload-Metadata": "connection ZGVtbw=="})
        assert r.status == 400
        r = await call("POST", "/tus/", {**v, "Upload-Length": "10", "Upload-Metadata": md(pipeline="demo-orders-out")})
        assert r.status == 422  # outbound
        r = await call("POST", "/tus/", {**v, "Upload-Length": "10",
                                         "Upload-Metadata": md(connection="acme", pipeline="acme-orders-out")})
        assert r.status == 422  # not inbound
        r = await call("POST", "/tus/", {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {DEMO_KEY}",
                                         "Upload-Length": "10", "Upload-Metadata": md(connection="acme")})
        assert r.status == 403
        r = await call("POST", "/tus/", {**v, "Upload-Length": "10", "Upload-Metadata": md()})
        assert r.status == 201 and "Upload-Expires" in r.headers
        path = "/tus/" + r.headers["Location"].rsplit("/", 1)[1]
        octets = {**v, "Content-Type": "application/offset+octet-stream"}
        r = await call("PATCH", path, {**octets, "Upload-Offset": "3"}, b"abc")
        assert r.status == 409 and r.headers["Upload-Offset"] == "0"
        r = await call("PATCH", path, {**v, "Content-Type": "text/plain", "Upload-Offset": "0"}, b"abc")
        assert r.status == 415
        r = await call("PATCH", path, {**octets, "Upload-Offset": "0"}, b"0123456789abc")
        assert r.status == 413
        bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
        r = await call("PATCH", path, {**octets, "Upload-Offset": "0", "Upload-Checksum": f"sha256 {bad}"}, b"email")
        assert r.status == 460
        r = await call("HEAD", path, v)
        assert (r.status, r.headers["Upload-Offset"], r.headers["Upload-Length"]) == (200, "0", "10")
        good = base64.b64encode(hashlib.md5(b"email").digest()).decode()  # noqa: S324 - the protocol's md5
        r = await call("PATCH", path, {**octets, "Upload-Offset": "0", "Upload-Checksum": f"md5 {good}"}, b"email")
        assert r.status == 204 and r.headers["Upload-Offset"] == "5"
        r = await call("PATCH", path, {**octets, "Upload-Offset": "5", "Upload-Checksum": "crc32 AAAA"}, b"x")
        assert r.status == 400
        r = await call("HEAD", "/tus/" + "0" * 32, v)
        assert r.status == 404
        r = await call("HEAD", "/tus/../../etc/passwd", v)
        assert r.status == 404
        r = await call("DELETE", path, v)
        assert r.status == 204
        r = await call("HEAD", path, v)
        assert r.status == 410
        r = await call("PATCH", path, {**octets, "Upload-Offset": "5"}, b"x")
        assert r.status == 410
        assert not (api.daemon.config.state_dir / "tus" / path.rsplit("/", 1)[1]).exists()
        # creation-with-upload, straight to a complete file
        body = b"email\nann@example.org\n"
        r = await call("POST", "/tus/", {**v, "Upload-Length": str(len(body)), "Upload-Metadata": md(),
                                         "Content-Type": "application/offset+octet-stream"}, body)
        assert r.status == 201 and r.headers["Upload-Offset"] == str(len(body))


async def test_two_patches_at_once_are_not_interleaved(api: Api) -> None:
    v = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {ADMIN_KEY}"}
    md = ",".join(f"{k} {base64.b64encode(x.encode()).decode()}" for k, x in meta().items())
    size = 4 * 1024 * 1024
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{api.url}/tus/", headers={**v, "Upload-Length": str(size), "Upload-Metadata": md}) as r:
            url = r.headers["Location"]

        async def slow_body() -> Any:
            for _ in range(20):
                yield b"a" * 1024
                await asyncio.sleep(0.05)

        headers = {**v, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
        first = asyncio.create_task(s.patch(url, headers=headers, data=slow_body()))
        await asyncio.sleep(0.3)
        async with s.patch(url, headers=headers, data=b"b" * 1024) as second:
            assert second.status in (409, 423)
        async with await first as r:
            assert r.status == 204 and r.headers["Upload-Offset"] == str(20 * 1024)
    data = (api.daemon.config.state_dir / "tus" / url.rsplit("/", 1)[1]).read_bytes()
    assert data == b"a" * 20 * 1024


async def test_cors_for_browser_clients(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(http_extra='tus: {cors_origins: ["https://app.example"]}')
    async with aiohttp.ClientSession() as s:
        async with s.options(f"{api.url}/tus/", headers={"Origin": "https://app.example",
                                                         "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "Upload-Metadata" in r.headers["Access-Control-Allow-Headers"]
        async with s.options(f"{api.url}/tus/", headers={"Origin": "https://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        async with s.head(f"{api.url}/tus/{'0' * 32}", headers={"Origin": "https://app.example",
                                                                "Tus-Resumable": "1.0.0",
                                                                "Authorization": f"Bearer {ADMIN_KEY}"}) as r:
            assert r.status == 404 and "Upload-Offset" in r.headers["Access-Control-Expose-Headers"]


async def test_expired_uploads_answer_410_and_their_bytes_are_swept(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(http_extra="tus: {expire_after: 1s}")
    v = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {ADMIN_KEY}"}
    md = ",".join(f"{k} {base64.b64encode(x.encode()).decode()}" for k, x in meta().items())
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{api.url}/tus/", headers={**v, "Upload-Length": "100", "Upload-Metadata": md}) as r:
            url = r.headers["Location"]
        stored = api.daemon.config.state_dir / "tus" / url.rsplit("/", 1)[1]
        assert stored.exists()
        status = 0
        for _ in range(80):  # bounded: ~4 s
            async with s.head(url, headers=v) as r:
                status = r.status
            if status == 410 and not stored.exists():
                break
            await asyncio.sleep(0.05)
        assert status == 410 and not stored.exists()


async def test_uploads_over_http_wait_while_the_disk_is_low(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(sftp_extra="min_free_space: 100000TB")  # more than any disk: always "low"
    v = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {ADMIN_KEY}"}
    md = ",".join(f"{k} {base64.b64encode(x.encode()).decode()}" for k, x in meta().items())
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{api.url}/tus/", headers={**v, "Upload-Length": "10", "Upload-Metadata": md}) as r:
            assert r.status == 507 and "low on disk space" in (await r.json())["error"]["message"]
        async with s.post(f"{api.url}/outbound/uploads", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json={
                "connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": 1}) as r:
            uid = (await r.json())["uploadId"]
        async with s.put(f"{api.url}/outbound/uploads/{uid}/parts/1", data=b"[]",
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
            assert r.status == 507


async def test_the_completing_patch_and_head_after_it_carry_the_run_id(start_api: Callable[..., Any]) -> None:
    api: Api = await start_api(http_extra='tus: {cors_origins: ["https://app.example"]}')

    def upload() -> tuple[str, dict[str, str], dict[str, str]]:
        uploader = tus_client(api).uploader(file_stream=io.BytesIO(CSV), chunk_size=30_000, metadata=meta())
        uploader.upload_chunk()  # not the last chunk: no run yet
        first = {k.lower(): v for k, v in uploader.request.response_headers.items()}
        uploader.upload()
        return str(uploader.url), first, {k.lower(): v for k, v in uploader.request.response_headers.items()}

    url, first, last = await asyncio.to_thread(upload)
    assert "feedd-run-id" not in first
    [run] = await one_completed_run(api)
    assert last["feedd-run-id"] == run.run_id
    status, body = await api.call("GET", f"/runs/{last['feedd-run-id']}")
    assert status == 200 and body["source"]["kind"] == "tus"
    headers = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {ADMIN_KEY}", "Origin": "https://app.example"}
    async with aiohttp.ClientSession() as s, s.head(url, headers=headers) as r:
        assert r.status == 200 and r.headers["Feedd-Run-Id"] == run.run_id
        assert "Feedd-Run-Id" in r.headers["Access-Control-Expose-Headers"]  # a browser client may read it
    # creation-with-upload: a POST that carries every byte completes the upload and names the run
    small = b"email\na@example.org\n"
    create = {**headers, "Upload-Length": str(len(small)), "Content-Type": "application/offset+octet-stream",
              "Upload-Metadata": ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                                          for k, v in meta(filename="one.csv").items())}
    async with aiohttp.ClientSession() as s, s.post(f"{api.url}/tus/", headers=create, data=small) as r:
        assert r.status == 201 and r.headers["Upload-Offset"] == str(len(small))
        posted = r.headers["Feedd-Run-Id"]
    status, body = await api.call("GET", f"/runs/{posted}")
    assert status == 200 and body["source"]["name"] == "one.csv"
