"""Requests that go wrong before or inside a route: always the contract's JSON error, never a 500 for a
client's mistake, never aiohttp's plain text."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from tests.http.conftest import ADMIN_KEY, Api


async def raw_request(api: Api, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send them), read the answer until the close."""
    port = int(api.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: bad\x01value\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n",
    b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"NOT-HTTP\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
])
async def test_a_malformed_request_gets_the_json_error(api: Api, request_bytes: bytes) -> None:
    status, headers, body = await raw_request(api, request_bytes)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and error["message"].startswith("malformed HTTP request"), error


TUS = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {ADMIN_KEY}"}
METADATA = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                    for k, v in {"connection": "demo", "pipeline": "demo-contacts", "filename": "a.csv"}.items())
NOT_A_SIZE = ["１２３", "١٢٣", "²", "9" * 4301, "9" * 21, "-1", "+5", "0x10", "5 5", ""]


async def tus_create(api: Api, length: str) -> aiohttp.ClientResponse:
    async with api.session.post(f"{api.url}/tus/", headers={**TUS, "Upload-Length": length,
                                                           "Upload-Metadata": METADATA}) as resp:
        await resp.read()
        return resp


@pytest.mark.parametrize("value", NOT_A_SIZE)
async def test_upload_length_and_offset_that_are_not_ascii_sizes_get_400(api: Api, value: str) -> None:
    resp = await tus_create(api, value)
    assert resp.status == 400 and resp.headers["Tus-Resumable"] == "1.0.0"
    async with api.session.post(f"{api.url}/tus/", headers={**TUS, "Upload-Length": value,
                                                           "Upload-Metadata": METADATA}) as r:
        assert (await r.json())["error"]["code"] == "invalid_length"
    created = await tus_create(api, "10")
    assert created.status == 201
    async with api.session.patch(created.headers["Location"], data=b"x", headers={
            **TUS, "Upload-Offset": value, "Content-Type": "application/offset+octet-stream"}) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_offset"
        assert r.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize("value", ["9" * 4301, "１２"])
async def test_a_query_integer_that_is_not_ascii_or_too_long_gets_400(api: Api, value: str) -> None:
    status, body = await api.call("GET", "/runs", params={"limit": value})
    assert status == 400 and body["error"]["code"] == "invalid_query", body


async def test_a_stalled_tus_patch_gets_408_and_keeps_what_arrived(api: Api, fast_rate: None) -> None:
    created = await tus_create(api, "100")
    port = int(api.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        path = created.headers["Location"].split(str(port), 1)[1]
        writer.write(f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer {ADMIN_KEY}"
                     "\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                     "Content-Length: 100\r\n\r\n".encode() + b"email\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"Tus-Resumable: 1.0.0" in head and b"application/json" in head
    finally:
        writer.close()
    async with api.session.head(created.headers["Location"], headers=TUS) as r:
        assert r.status == 200 and r.headers["Upload-Offset"] == "6"  # the bytes that did arrive count


@pytest.mark.parametrize("headers", ["email,na\x01me", "a\x7f", "\x00", "ok,\x1b[31mred", "a\u0085b"])
async def test_mapping_suggestions_refuse_control_characters(api: Api, headers: str) -> None:
    status, body = await api.call("GET", "/pipelines/demo-contacts/mapping-suggestions", params={"headers": headers})
    assert status == 400 and body["error"]["code"] == "invalid_query", body
    assert "control character" in body["error"]["message"]


@pytest.mark.parametrize("raw", ["%ED%A0%80", "a%FFb", "%C3", "e%00mail"])
async def test_mapping_suggestions_refuse_bytes_that_are_not_text(api: Api, raw: str) -> None:
    status, _, body = await raw_request(api, (
        f"GET /pipelines/demo-contacts/mapping-suggestions?headers={raw} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\n\r\n").encode())
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_query", body


async def test_mapping_suggestions_still_work_for_unicode_headers(api: Api) -> None:
    status, body = await api.call("GET", "/pipelines/demo-contacts/mapping-suggestions",
                                  params={"headers": "E-Mail,Größe,名前"})
    assert status == 200 and body["suggestions"]["email"]["source"] == "E-Mail", body
