"""Three feedd nodes on one PostgreSQL store and one shared directory, behind HAProxy (PROXY protocol v2) for
SFTP and HTTP. Partners upload with OpenSSH's `sftp` and paramiko (apps with tus and multipart uploads) while
one node kills itself with SIGKILL at a failpoint. What a user checks afterwards: every file a client was told
was taken became one run, processed and delivered once per destination under one idempotency key; no run
is left with the dead node; its work was taken over within `cluster.takeover_after`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import paramiko
import pytest

from feedd.failpoints import NAMES
from tests.delivery.conftest import Receiver
from tests.haproxy import haproxy, needs_haproxy
from tests.helpers import DEMO_HASH, Daemon, eventually, write
from tests.sftp.test_proxy_protocol import paramiko_upload

pytestmark = [needs_haproxy, pytest.mark.timeout(300)]

KEY = "cluster-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
TAKEOVER = 3.0  # cluster.takeover_after, seconds
FILES = 6  # uploaded over SFTP: half with OpenSSH, half with paramiko


def config(tmp_path: Path, receiver: Receiver, pubkey: str, host_key: Path) -> Path:
    (tmp_path / "spaces" / "demo" / "inbox").mkdir(parents=True, exist_ok=True)
    return write(tmp_path, "feedd.yaml", f"""state_dir: ./var
log: {{level: info, format: json}}
store: {{type: postgresql, dsn: "${{FEEDD_TEST_DSN}}"}}
cluster: {{takeover_after: {TAKEOVER}s}}
sftp:
  listen: "127.0.0.1:0"
  spaces_dir: ./spaces
  host_keys: ["{host_key}"]
  # the node serving an upload takes it at its CLOSE (after 0.5 s); the others, which see the same files,
  # would take it once quiet for `settle`: longer here, so that the node that may die is the one taking it
  settle: 3s
  scan_interval: 1s
  proxy_protocol: true
http:
  listen: "127.0.0.1:0"
  proxy_protocol: true
  api_keys: [{{name: t, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}", role: admin}}]
schemas: {{contact: {{fields: {{email: {{type: email, required: true}}}}}}}}
connections: {{demo: {{password_hash: "{DEMO_HASH}", authorized_keys: ["{pubkey}"]}}}}
pipelines:
  demo-contacts:
    connection: demo
    schema: contact
    match: ["inbox/*.csv"]
    output: {{filename: "{{stem}}.{{run_id}}.{{ext}}"}}
    destinations:
      - {{type: directory, path: ./out}}
      - {{type: webhook, url: "{receiver.url('/ingest')}", batch_size: 1}}
  demo-out:
    connection: demo
    schema: contact
    direction: outbound
""")


def rows(n: int) -> bytes:
    return f"email\nann{n}@example.org\nbob{n}@example.org\n".encode()


def openssh_put(port: int, key: Path, local: Path, cwd: Path) -> bool:
    script = cwd / f"{local.name}.batch"
    script.write_text(f"put {local} inbox/{local.name}\n")
    done = subprocess.run(
        ["sftp", "-b", str(script), "-P", str(port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "demo@127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd)
    return done.returncode == 0


def paramiko_put(port: int, name: str, data: bytes) -> bool:
    try:
        paramiko_upload(port, "127.0.0.1", name, data)
    except (OSError, EOFError, paramiko.SSHException):
        return False
    return True


def upload(n: int, port: int, key: Path, cwd: Path) -> int:
    """Upload file n as a partner would: again after a failure (the node died under it). The attempts taken."""
    name = f"f{n}.csv"
    local = cwd / name
    local.write_bytes(rows(n))
    for attempt in range(1, 6):
        if openssh_put(port, key, local, cwd) if n % 2 else paramiko_put(port, name, rows(n)):
            return attempt
        time.sleep(0.5)
    raise AssertionError(f"{name} could not be uploaded in 5 attempts")


async def tus_feed(s: aiohttp.ClientSession, url: str, n: int) -> str:
    """Create a tus upload and send its body; the node may die mid-PATCH. Returns the upload's URL."""
    body = rows(100 + n)
    md = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in
                  {"connection": "demo", "pipeline": "demo-contacts", "filename": f"t{n}.csv"}.items())
    v = {**AUTH, "Tus-Resumable": "1.0.0"}
    async with s.post(f"{url}/tus/", headers={**v, "Upload-Length": str(len(body)), "Upload-Metadata": md}) as r:
        location = f"{url}/tus/{r.headers['Location'].rsplit('/', 1)[1]}"
    try:
        async with s.patch(location, data=body, headers={
                **v, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}):
            pass
    except (aiohttp.ClientError, TimeoutError):
        pass
    return location


async def tus_finish(url: str, location: str, n: int) -> None:
    """Resume as a tus client does: from HEAD's offset, and again later while the upload is locked (the dead
    node's hold lasts until a node takes its work over)."""
    body = rows(100 + n)
    v = {**AUTH, "Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        for _ in range(int(6 * TAKEOVER / 0.25)):
            async with s.head(location, headers=v) as r:
                offset = int(r.headers["Upload-Offset"])
            if offset == len(body):
                return
            async with s.patch(location, data=body[offset:], headers={
                    **v, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}) as r:
                if r.status != 423:
                    assert r.status == 204, await r.text()
                    return
            await asyncio.sleep(0.25)
        raise AssertionError(f"{location} stayed locked")


async def multipart_feed(s: aiohttp.ClientSession, url: str, n: int) -> str:
    async with s.post(f"{url}/outbound/uploads", headers=AUTH, json={
            "connectionName": "demo", "pipelineId": "demo-out", "totalParts": 1}) as r:
        uid = str((await r.json())["uploadId"])
    async with s.put(f"{url}/outbound/uploads/{uid}/parts/1", headers=AUTH,
                     json=[{"email": f"out{n}@example.org"}]):
        pass
    try:
        async with s.post(f"{url}/outbound/uploads/{uid}/complete", headers=AUTH,
                          json={"parts": [{"partNumber": 1}]}):
            pass
    except (aiohttp.ClientError, TimeoutError):
        pass
    return uid


async def multipart_finish(url: str, uid: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        async with s.get(f"{url}/outbound/uploads/{uid}", headers=AUTH) as r:
            state = (await r.json())["state"]
        if state != "completed":
            async with s.post(f"{url}/outbound/uploads/{uid}/complete", headers=AUTH,
                              json={"parts": [{"partNumber": 1}]}) as r:
                assert r.status == 200, await r.text()


async def api(url: str, path: str) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s, \
            s.get(f"{url}{path}", headers=AUTH) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def settled(url: str, inbound: int, outbound: int = 0, within: float = 90.0) -> list[dict[str, Any]]:
    """Every run, once there are `inbound` and `outbound` originals and every run has reached its end."""
    deadline = time.monotonic() + within
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            runs = (await api(url, "/runs?limit=1000"))["data"]
        except (aiohttp.ClientError, TimeoutError):
            runs = []  # a request that HAProxy sent to the dead node as it died
        originals = [r["direction"] for r in runs if r.get("duplicateOf") is None]
        if originals.count("inbound") >= inbound and originals.count("outbound") >= outbound \
                and all(r["status"] in ("delivered", "failed") for r in runs):
            return runs
        await asyncio.sleep(0.2)
    raise AssertionError(f"runs stuck: {[(r['runId'], r['status'], r['deliveries']) for r in runs]}")


def ended(node: Daemon, within: float) -> bool:
    try:
        node.wait(within)
    except subprocess.TimeoutExpired:
        return False
    return True


def start(path: Path, env: dict[str, str]) -> Daemon:
    node = Daemon(path, env=env)
    node.wait_log("ready", 60)
    return node


@pytest.mark.parametrize("failpoint", NAMES)
async def test_three_nodes_behind_haproxy_lose_nothing_when_one_is_killed(
        failpoint: str, tmp_path: Path, pg_dsn: str, receiver: Receiver, demo_key: tuple[Path, str],
        host_key: Path, daemons: list[Daemon]) -> None:
    path = config(tmp_path, receiver, demo_key[1], host_key)
    env = {"FEEDD_TEST_DSN": pg_dsn}
    # The doomed node starts first, alone, so that it records the database's host key and the others join.
    doomed = await asyncio.to_thread(start, path, {**env, "FEEDD_FAILPOINT": failpoint})
    daemons.append(doomed)
    others = await asyncio.gather(*(asyncio.to_thread(start, path, env) for _ in range(2)))
    daemons.extend(others)
    nodes = [doomed, *others]
    sftp_ports = [await asyncio.to_thread(n.sftp_port) for n in nodes]
    http_ports = [await asyncio.to_thread(n.http_port) for n in nodes]
    http_kind = {"tus.mid_patch": "tus", "upload.mid_complete": "upload"}.get(failpoint)
    with haproxy(tmp_path, sftp_ports) as sftp_front, haproxy(tmp_path, http_ports) as http_front:
        url = f"http://127.0.0.1:{http_front}"
        async def all_three() -> bool:
            listed = (await api(url, "/cluster"))["data"]
            return len(listed) == 3 and all(n["alive"] for n in listed)

        await eventually(all_three, 30, "three nodes alive")
        started = [asyncio.to_thread(upload, n, sftp_front, demo_key[0], tmp_path) for n in range(FILES)]
        fed: list[str] = []
        if http_kind is not None:
            # each new connection goes to the next node: feed until the doomed node has taken one and died
            for n in range(6):
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
                    fed.append(await (tus_feed(s, url, n) if http_kind == "tus" else multipart_feed(s, url, n)))
                if doomed.proc.poll() is not None:
                    break
        attempts = list(await asyncio.gather(*started))
        # Which node claims a run, a delivery or an event is a race among the three: while the doomed node has
        # not reached its point, more files come, a few at a time.
        files = FILES
        for _ in range(8):
            if await asyncio.to_thread(ended, doomed, 10):
                break
            attempts += await asyncio.gather(*(asyncio.to_thread(upload, n, sftp_front, demo_key[0], tmp_path)
                                               for n in range(files, files + 2)))
            files += 2
        code = await asyncio.to_thread(doomed.wait, 60)
        killed = time.monotonic()
        assert code == -9, f"{failpoint} was never reached (exit {code})"
        for n, handle in enumerate(fed):
            await (tus_finish(url, handle, n) if http_kind == "tus" else multipart_finish(url, handle))
        runs = await settled(url, files + (len(fed) if http_kind == "tus" else 0),
                             len(fed) if http_kind == "upload" else 0)

        async def dead_one_gone() -> dict[str, Any] | None:  # the dead node is forgotten once taken over
            got: dict[str, Any] = await api(url, "/cluster")
            return got if len(got["data"]) == 2 else None

        listed = await eventually(dead_one_gone, 6 * TAKEOVER, "the dead node taken over")
        print(f"\nCLUSTER {failpoint}: runs={len(runs)} upload attempts={attempts} "
              f"settled and taken over in {time.monotonic() - killed:.1f}s")

    # Each file a client was told was taken is one run (a retried upload of a recorded file is a duplicate of
    # it, never a second original), processed and delivered.
    originals = [r for r in runs if r.get("duplicateOf") is None and r["direction"] == "inbound"]
    names = sorted(Path(r["source"]["name"]).name for r in originals)
    expected = sorted([f"f{n}.csv" for n in range(files)] + ([f"t{n}.csv" for n in range(len(fed))]
                                                              if http_kind == "tus" else []))
    assert names == expected, [(r["source"]["name"], r["status"], r.get("error")) for r in runs]
    assert all(r["status"] == "delivered" for r in originals), [(r["runId"], r["status"], r.get("error"))
                                                                for r in originals]
    for r in runs:
        if r.get("duplicateOf") is not None:
            assert r["error"]["code"] == "duplicate_input"
    if http_kind == "upload":
        outbound = [r for r in runs if r["direction"] == "outbound"]
        assert len(outbound) == len(fed) and all(r["status"] in ("completed", "delivered") for r in outbound)
    # Once per destination: one output file per run, and the webhook's messages under the run's own keys.
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == sorted(f"{Path(r['source']['name']).stem}.{r['runId']}.jsonl" for r in originals)
    for r in originals:
        ids = {m.headers["webhook-id"] for m in receiver.at("/ingest")
               if m.headers["webhook-id"].startswith(r["runId"] + ".")}
        assert ids == {f"{r['runId']}.webhook:{receiver.url('/ingest')}.{n}" for n in (1, 2)}
    # Nothing is left with the dead node: it is gone from the list, and nobody holds work.
    assert all(n["alive"] for n in listed["data"])
    assert all(n["holds"] == {"runs": [], "deliveries": 0, "events": 0} for n in listed["data"])
    assert not any(p.name.startswith(".") for p in (tmp_path / "spaces" / "demo").rglob("*") if p.is_file())
    assert not list((tmp_path / "spaces" / "demo" / "inbox").iterdir()), "a file was not taken"


async def test_the_takeover_time_after_a_kill_9(tmp_path: Path, pg_dsn: str, receiver: Receiver,
                                                demo_key: tuple[Path, str], host_key: Path,
                                                daemons: list[Daemon]) -> None:
    """kill -9 of an idle node: the others see it alive, then within takeover_after (plus one heartbeat)
    no longer list it."""
    path = config(tmp_path, receiver, demo_key[1], host_key)
    env = {"FEEDD_TEST_DSN": pg_dsn}
    first = await asyncio.to_thread(start, path, env)
    daemons.append(first)
    second = await asyncio.to_thread(start, path, env)
    daemons.append(second)
    with haproxy(tmp_path, [await asyncio.to_thread(second.http_port)]) as front:  # the listeners want the header
        url = f"http://127.0.0.1:{front}"
        assert len((await api(url, "/cluster"))["data"]) == 2
        first.proc.kill()
        await asyncio.to_thread(first.wait, 20)
        killed = time.monotonic()
        deadline = killed + 60
        while len((await api(url, "/cluster"))["data"]) == 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        gone = time.monotonic() - killed
        print(f"\nTAKEOVER after kill -9: {gone:.1f}s (takeover_after {TAKEOVER}s)")
        [left] = (await api(url, "/cluster"))["data"]
    assert left["self"] and left["alive"]
    entry = await asyncio.to_thread(second.wait_log, "cluster.took_over", 5.0)
    assert json.dumps(entry)
