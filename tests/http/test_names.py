"""Names a client chooses over the side API for files in a partner's space: refused at creation unless the
SFTP jail would accept them, with every suffix feedd adds counted in bytes."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import paramiko
import pytest

from tests.helpers import DEMO_PASSWORD
from tests.http.conftest import ADMIN_KEY, Api
from tests.http.test_tus import one_completed_run

TUS = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {ADMIN_KEY}"}
# (name, what the error must mention)
BAD = [
    ("a\x7fb.csv", "U+007F"),
    ("invoice\u202eexe.csv", "U+202E"),
    ("\u2066x\u2069.csv", "U+2066"),
    ("a\x00b.csv", "U+0000"),
    ("a\nb.csv", "U+000A"),
    ("a\x1bb.csv", "U+001B"),
    ("../a.csv", "'/'"),
    ("inbox/a.csv", "'/'"),
    ("a\\b.csv", "'\\\\'"),
    ("..", "not a file name"),
    (".", "not a file name"),
    ("x" * 296 + ".csv", "bytes"),
    ("é" * 125 + ".csv", "bytes"),  # 254 bytes: the report's suffix takes it past 255
]


def metadata(filename: str) -> str:
    values = {"connection": "demo", "pipeline": "demo-contacts", "filename": filename}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def create(api: Api, filename: str, body: bytes = b"") -> tuple[int, Any, dict[str, str]]:
    headers = {**TUS, "Upload-Length": str(len(body)), "Upload-Metadata": metadata(filename)}
    if body:
        headers["Content-Type"] = "application/offset+octet-stream"
    async with api.session.post(f"{api.url}/tus/", headers=headers, data=body) as resp:
        answer = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, answer, dict(resp.headers)


@pytest.mark.parametrize(("name", "mention"), BAD)
async def test_a_tus_filename_the_jail_would_refuse_is_refused_at_creation(api: Api, name: str,
                                                                           mention: str) -> None:
    status, body, _ = await create(api, name, b"email\nann@example.org\n")
    assert status == 400, body
    assert body["error"]["code"] == "invalid_metadata"
    assert body["error"]["message"].startswith("Upload-Metadata filename") and mention in body["error"]["message"]
    stored = api.daemon.config.state_dir / "tus"
    assert not stored.exists() or not list(stored.iterdir())
    assert await api.runs() == []


@pytest.mark.parametrize(("name", "mention"), BAD)
async def test_a_multipart_filename_the_jail_would_refuse_is_refused(api: Api, name: str, mention: str) -> None:
    status, body = await api.call("POST", "/outbound/uploads", json={
        "connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": 1, "filename": name})
    assert status == 400 and body["error"]["code"] == "invalid_body", body
    assert body["error"]["message"].startswith("filename")


def outbox_listing_read_and_delete(port: int, wanted: str) -> tuple[list[str], bytes]:
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username="demo", password=DEMO_PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        names = sftp.listdir("/outbox")
        with sftp.open(f"/outbox/{wanted}", "rb") as f:
            data = f.read()
        sftp.remove(f"/outbox/{wanted}")
        return names, data
    finally:
        transport.close()


async def test_a_unicode_name_still_works_end_to_end(api: Api) -> None:
    name = "Überweisungen März – 名前 ✓.csv"
    status, body, _ = await create(api, name, b"email\nann@example.org\n")
    assert status == 201, body
    runs = await one_completed_run(api)
    assert runs and runs[0].status == "completed" and runs[0].source.name == name
    report = f"{name}.report.json"
    names, data = await asyncio.to_thread(outbox_listing_read_and_delete, api.sftp_port, report)
    assert report in names and b'"completed"' in data
    assert not (api.daemon.config.sftp.spaces_dir / "demo" / "outbox" / report).exists()
