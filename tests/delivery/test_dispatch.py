"""Fan-out to every destination with real receivers on loopback: retries, timeouts, signatures, S3, SFTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import pytest

from tests.delivery.conftest import SECRET, Receiver, verify
from tests.http.conftest import Api
from tests.http.test_runs import drop


async def settled(api: Api, within: float = 30.0) -> dict[str, Any]:
    """The one run, once it is delivered or every delivery has ended."""
    deadline = time.monotonic() + within
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, page = await api.call("GET", "/runs")
        assert status == 200
        if page["data"]:
            run = page["data"][0]
            if run["status"] in ("delivered", "failed") or (
                    run["status"] == "completed" and run["deliveries"]
                    and all(d["status"] != "pending" for d in run["deliveries"])):
                return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run not settled: {run}")


async def test_a_webhook_that_fails_twice_then_accepts(start_api: Callable[..., Any], receiver: Receiver) -> None:
    receiver.script["/ingest"] = [500, 503, 200]
    api: Api = await start_api(pipeline_extra=f"""destinations:
      - {{type: webhook, url: "{receiver.url('/ingest')}", secret: "{SECRET}", batch_size: 2}}""")
    await drop(api, "c.csv", "email\nann@example.org\nbob@example.org\ncy@example.org\n")
    run = await settled(api)
    assert run["status"] == "delivered", run
    [delivery] = run["deliveries"]
    assert delivery["attempts"] == 3 and delivery["status"] == "delivered" and delivery["deliveredAt"]
    posts = receiver.at("/ingest")
    # attempt 1 fails on batch 1; attempt 2 fails on batch 1; attempt 3 sends batches 1 and 2
    assert len(posts) == 4
    ids = [p.headers["webhook-id"] for p in posts]
    assert ids[0] == ids[1] == ids[2] != ids[3]  # the same batch keeps its id on every retry
    for p in posts:
        assert verify(SECRET, p.headers, p.body)
        assert p.headers["Content-Type"] == "application/x-ndjson"
        assert p.headers["Idempotency-Key"].startswith(run["runId"] + ":")
    records = [json.loads(line) for p in posts[2:] for line in p.body.splitlines()]
    assert records == [{"email": "ann@example.org"}, {"email": "bob@example.org"}, {"email": "cy@example.org"}]


async def test_a_receiver_that_never_answers_does_not_hold_up_the_directory(
        start_api: Callable[..., Any], receiver: Receiver, tmp_path: Path) -> None:
    receiver.delay["/slow"] = 30
    out = tmp_path / "out"
    api: Api = await start_api(pipeline_extra=f"""destinations:
      - {{type: webhook, url: "{receiver.url('/slow')}", timeout: 3s}}
      - {{type: directory, path: "{out}"}}""")
    await drop(api, "c.csv", "email\nann@example.org\n")
    for _ in range(200):
        if out.is_dir() and list(out.iterdir()):
            break
        await asyncio.sleep(0.02)
    assert list(out.iterdir())
    _, page = await api.call("GET", "/runs")
    hook = next(d for d in page["data"][0]["deliveries"] if d["destination"].startswith("webhook"))
    assert hook["attempts"] == 0, "the directory destination waited for the webhook"
    for _ in range(200):
        _, page = await api.call("GET", "/runs")
        hook = next(d for d in page["data"][0]["deliveries"] if d["destination"].startswith("webhook"))
        if hook["attempts"] >= 1:
            break
        await asyncio.sleep(0.05)
    assert hook["status"] == "pending" and "TimeoutError" in (hook["lastError"] or ""), hook
    assert page["data"][0]["status"] == "completed"  # not delivered while one destination is still trying


async def test_410_gone_disables_the_webhook_until_a_retry(start_api: Callable[..., Any],
                                                            receiver: Receiver) -> None:
    receiver.script["/gone"] = [410]
    api: Api = await start_api(pipeline_extra=f'destinations: [{{type: webhook, url: "{receiver.url("/gone")}"}}]')
    await drop(api, "c.csv", "email\nann@example.org\n")
    run = await settled(api)
    assert run["status"] == "completed"
    assert run["deliveries"][0]["status"] == "failed" and run["deliveries"][0]["attempts"] == 1
    assert "410" in run["deliveries"][0]["lastError"]
    # the next run does not even try: the receiver said it wants nothing more
    await drop(api, "d.csv", "email\nbob@example.org\n")
    second: dict[str, Any] = {}
    for _ in range(200):
        _, page = await api.call("GET", "/runs")
        second = page["data"][0]
        if second["runId"] != run["runId"] and second["deliveries"] and \
                second["deliveries"][0]["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert "disabled" in second["deliveries"][0]["lastError"] and len(receiver.at("/gone")) == 1
    # an operator's retry enables it again
    receiver.script["/gone"] = [200]
    status, _ = await api.call("POST", f"/runs/{second['runId']}/retry")
    assert status == 200
    for _ in range(200):
        _, again = await api.call("GET", f"/runs/{second['runId']}")
        if again["status"] == "delivered":
            break
        await asyncio.sleep(0.05)
    assert again["status"] == "delivered" and len(receiver.at("/gone")) == 2


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Any:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket="feeds")
    yield url, client
    server.stop()


async def test_s3_objects_are_read_back(start_api: Callable[..., Any], s3: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from feedd.delivery import targets

    url, client = s3
    monkeypatch.setattr(targets, "S3_PART", 5 * 1024 * 1024)  # S3's smallest part: a multipart upload here
    api: Api = await start_api(pipeline_extra=f"""output: {{format: csv, filename: "{{stem}}.csv"}}
    destinations: [{{type: s3, bucket: feeds, prefix: "demo/", endpoint_url: "{url}"}}]""")
    await drop(api, "small.csv", "email\nann@example.org\n")
    run = await settled(api)
    assert run["status"] == "delivered", run
    got = await asyncio.to_thread(client.get_object, Bucket="feeds", Key="demo/small.csv")
    assert got["Body"].read().decode().splitlines() == ["email", "ann@example.org"]
    assert got["Metadata"]["feedd-run-id"] == run["runId"]
    rows = "".join(f"user{i:07d}@example.org\n" for i in range(260_000))  # ~6.5 MB of CSV out
    await drop(api, "big.csv", "email\n" + rows)
    for _ in range(600):
        _, page = await api.call("GET", "/runs?status=delivered")
        if len(page["data"]) == 2:
            break
        await asyncio.sleep(0.05)
    got = await asyncio.to_thread(client.get_object, Bucket="feeds", Key="demo/big.csv")
    body = got["Body"].read()
    assert body.count(b"\n") == 260_001 and got["ContentLength"] > 5 * 1024 * 1024


class _Remote(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == "drop" and password == "remote-secret"


async def test_sftp_push_to_a_remote_server(start_api: Callable[..., Any], tmp_path: Path) -> None:
    root = tmp_path / "remote"
    (root / "upload").mkdir(parents=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen("127.0.0.1", 0, server_factory=_Remote, server_host_keys=[key],
                                   sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root)))
    port = server.sockets[0].getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {key.export_public_key().decode()}")
    try:
        api: Api = await start_api(pipeline_extra=f"""output: {{filename: "{{stem}}.jsonl"}}
    destinations: [{{type: sftp, host: 127.0.0.1, port: {port}, username: drop, password: remote-secret,
                     known_hosts: "{known}", path: /upload}}]""")
        await drop(api, "push.csv", "email\nann@example.org\n")
        run = await settled(api)
        assert run["status"] == "delivered", run
        assert [p.name for p in (root / "upload").iterdir()] == ["push.jsonl"]  # no temporary name left
        assert json.loads((root / "upload" / "push.jsonl").read_text()) == {"email": "ann@example.org"}
        # a host key that does not match is refused, not trusted
        other = asyncssh.generate_private_key("ssh-ed25519")
        known.write_text(f"[127.0.0.1]:{port} {other.export_public_key().decode()}")
        await drop(api, "again.csv", "email\nbob@example.org\n")
        for _ in range(200):
            _, page = await api.call("GET", "/runs")
            d = page["data"][0]["deliveries"]
            if d and d[0]["status"] == "failed":
                break
            await asyncio.sleep(0.05)
        error = d[0]["lastError"].lower()
        assert d[0]["status"] == "failed"
        assert "host key" in error or "not trusted" in error, error
        assert not (root / "upload" / "again.jsonl").exists()
    finally:
        server.close()
        await server.wait_closed()


async def test_webhook_json_batches(start_api: Callable[..., Any], receiver: Receiver) -> None:
    api: Api = await start_api(pipeline_extra=f"""destinations:
      - {{type: webhook, url: "{receiver.url('/json')}", body: json, batch_size: 2}}""")
    await drop(api, "c.csv", "email\na@example.org\nb@example.org\nc@example.org\n")
    run = await settled(api)
    assert run["status"] == "delivered"
    posts = receiver.at("/json")
    assert [json.loads(p.body) for p in posts] == [[{"email": "a@example.org"}, {"email": "b@example.org"}],
                                                   [{"email": "c@example.org"}]]
    assert all(p.headers["Content-Type"] == "application/json" for p in posts)


async def test_max_attempts_bounds_the_retries(start_api: Callable[..., Any], receiver: Receiver) -> None:
    receiver.script["/down"] = [503]
    api: Api = await start_api(pipeline_extra=f"""destinations:
      - {{type: webhook, url: "{receiver.url('/down')}", max_attempts: 2}}""")
    await drop(api, "c.csv", "email\nann@example.org\n")
    run = await settled(api)
    assert run["deliveries"][0]["status"] == "failed" and run["deliveries"][0]["attempts"] == 2
    assert "503" in run["deliveries"][0]["lastError"] and len(receiver.at("/down")) == 2


async def test_a_redirect_is_not_followed_and_fails_the_attempt(start_api: Callable[..., Any], receiver: Receiver,
                                                                elsewhere: Receiver) -> None:
    receiver.redirect["/moved"] = elsewhere.url("/stolen")
    api: Api = await start_api(pipeline_extra=f"""destinations:
      - {{type: webhook, url: "{receiver.url('/moved')}", secret: "{SECRET}"}}""")
    await drop(api, "c.csv", "email\nann@example.org\n")
    run = await settled(api)
    [delivery] = run["deliveries"]
    assert delivery["status"] == "failed" and delivery["attempts"] == 1, delivery
    assert "307" in delivery["lastError"] and elsewhere.url("/stolen") in delivery["lastError"], delivery
    assert len(receiver.at("/moved")) == 1
    assert elsewhere.got == []  # neither the records nor their signature went where the receiver pointed
