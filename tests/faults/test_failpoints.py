"""kill -9 at every named point of a file's way through feedd, restart, and check what a user would:
every accepted input processed, every destination served under a stable key, no partial file where a
partner or consumer looks, no run stuck."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from feedd.failpoints import NAMES
from tests.delivery.conftest import Receiver
from tests.helpers import DEMO_HASH, Daemon, write

KEY = "failpoint-key-0123456789"
ROWS = "email\nann@example.org\nbob@example.org\n"


def config(tmp_path: Path, receiver: Receiver) -> Path:
    (tmp_path / "spaces" / "demo" / "inbox").mkdir(parents=True, exist_ok=True)
    return write(tmp_path, "feedd.yaml", f"""state_dir: ./var
log: {{level: info, format: json}}
sftp: {{listen: "127.0.0.1:0", spaces_dir: ./spaces, settle: 200ms, scan_interval: 1s}}
http:
  listen: "127.0.0.1:0"
  api_keys: [{{name: t, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"}}]
schemas: {{contact: {{fields: {{email: {{type: email, required: true}}}}}}}}
connections: {{demo: {{password_hash: "{DEMO_HASH}"}}}}
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv", "inbox/*.json"]
    output: {{filename: "{{stem}}.{{run_id}}.{{ext}}"}}
    destinations:
      - {{type: directory, path: ./out}}
      - {{type: webhook, url: "{receiver.url('/ingest')}", batch_size: 1}}
  demo-out:
    connection: demo
    schema: contact
    direction: outbound
""")


async def start(path: Path, failpoint: str | None = None) -> tuple[Daemon, str]:
    d = Daemon(path, env={"FEEDD_FAILPOINT": failpoint} if failpoint else {})
    port = await asyncio.to_thread(d.http_port)
    await asyncio.to_thread(d.wait_log, "ready")
    return d, f"http://127.0.0.1:{port}"


async def feed(kind: str, url: str, tmp_path: Path) -> None:
    """Send one input the way the failpoint needs; the daemon may die on the way."""
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            if kind == "tus":
                md = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in
                              {"connection": "demo", "pipeline": "demo-contacts", "filename": "t.csv"}.items())
                v = {**auth, "Tus-Resumable": "1.0.0"}
                async with s.post(f"{url}/tus/", headers={**v, "Upload-Length": str(len(ROWS)),
                                                          "Upload-Metadata": md}) as r:
                    (tmp_path / "tus-url").write_text(r.headers["Location"].rsplit("/", 1)[1])
                async with s.patch(r.headers["Location"], data=ROWS.encode(), headers={
                        **v, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}):
                    pass
            elif kind == "upload":
                async with s.post(f"{url}/outbound/uploads", headers=auth, json={
                        "connectionName": "demo", "pipelineId": "demo-out", "totalParts": 1}) as r:
                    uid = (await r.json())["uploadId"]
                (tmp_path / "upload-id").write_text(uid)
                async with s.put(f"{url}/outbound/uploads/{uid}/parts/1", headers=auth,
                                 json=[{"email": "ann@example.org"}]):
                    pass
                async with s.post(f"{url}/outbound/uploads/{uid}/complete", headers=auth,
                                  json={"parts": [{"partNumber": 1}]}):
                    pass
            else:
                (tmp_path / "spaces" / "demo" / "inbox" / "drop.csv").write_text(ROWS)
    except (aiohttp.ClientError, TimeoutError):
        pass  # the daemon died mid-request: that is the point


async def finish(kind: str, url: str, tmp_path: Path) -> None:
    """What a client does after the crash: resume from HEAD (tus), or complete again (multipart)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        if kind == "tus":
            v = {**auth, "Tus-Resumable": "1.0.0"}
            target = f"{url}/tus/{(tmp_path / 'tus-url').read_text()}"
            async with s.head(target, headers=v) as r:
                offset = int(r.headers["Upload-Offset"])
            if offset < len(ROWS):
                async with s.patch(target, data=ROWS.encode()[offset:], headers={
                        **v, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}) as r:
                    assert r.status == 204, await r.text()
        elif kind == "upload":
            uid = (tmp_path / "upload-id").read_text()
            async with s.get(f"{url}/outbound/uploads/{uid}", headers=auth) as r:
                state = (await r.json())["state"]
            if state != "completed":
                async with s.post(f"{url}/outbound/uploads/{uid}/complete", headers=auth,
                                  json={"parts": [{"partNumber": 1}]}) as r:
                    assert r.status == 200, await r.text()


async def settled(url: str, within: float = 40.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    runs: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            async with s.get(f"{url}/runs", headers={"Authorization": f"Bearer {KEY}"}) as r:
                runs = (await r.json())["data"]
            if runs and all(r["status"] in ("delivered", "failed") for r in runs):
                return runs
            await asyncio.sleep(0.1)
    raise AssertionError(f"runs stuck: {[(r['status'], r['deliveries']) for r in runs]}")


@pytest.mark.parametrize("failpoint", NAMES)
async def test_kill_9_at_each_failpoint_loses_nothing(failpoint: str, tmp_path: Path, receiver: Receiver,
                                                      daemons: list[Daemon]) -> None:
    kind = {"tus.mid_patch": "tus", "upload.mid_complete": "upload"}.get(failpoint, "drop")
    path = config(tmp_path, receiver)
    first, url = await start(path, failpoint)
    daemons.append(first)
    await feed(kind, url, tmp_path)
    code = await asyncio.to_thread(first.wait, 30)  # the failpoint must be hit: the process SIGKILLs itself
    assert code == -9, f"{failpoint} was never reached (exit {code})"
    restarted = time.monotonic()
    second, url = await start(path)
    daemons.append(second)
    if failpoint == "intake.after_spool":  # in the spool, never recorded: found and taken in again at start
        await asyncio.to_thread(second.wait_log, "intake.recovered")
    await finish(kind, url, tmp_path)
    runs = await settled(url)
    print(f"\nFAILPOINT {failpoint} runs={len(runs)} status={runs[0]['status']} "
          f"recovered_s={time.monotonic() - restarted:.1f}")
    assert len(runs) == 1 and runs[0]["status"] == "delivered", runs  # accepted once, processed, delivered
    run = runs[0]
    assert run["counts"]["valid"] == (1 if kind == "upload" else 2)
    if kind != "upload":
        outs = list((tmp_path / "out").iterdir())
        assert [p.name for p in outs] == [f"{Path(run['source']['name']).name.split('.')[0]}.{run['runId']}.jsonl"]
        assert [json.loads(line)["email"] for line in outs[0].read_text().splitlines()] == [
            "ann@example.org", "bob@example.org"]
        ids = {r.headers["webhook-id"] for r in receiver.at("/ingest")}
        assert ids == {f"{run['runId']}.webhook:{receiver.url('/ingest')}.{n}" for n in (1, 2)}
    visible = [p for p in (tmp_path / "spaces" / "demo").rglob("*") if p.is_file()]
    assert all(not p.name.startswith(".") for p in visible), visible  # no temporary or partial file left
    assert not list((tmp_path / "spaces" / "demo" / "inbox").iterdir()), "the input was not taken"
