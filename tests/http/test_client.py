"""feedd.client and `feedd push` / `feedd runs` against a real daemon's side port."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from feedd.client import Client, ClientError
from tests.http.conftest import ADMIN_KEY, Api
from tests.http.test_uploads import orders
from tests.sftp.conftest import fetch_outbox


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "feedd", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_upload_json_in_parts_then_wait_for_the_run(api: Api) -> None:
    client = Client(api.url, ADMIN_KEY)
    seen: list[tuple[int, int, int]] = []
    records = (r for r in orders(0, 25))  # any iterable, a generator included
    done = await asyncio.to_thread(client.upload_json, "demo", "demo-orders-out", records, 10,
                                   progress=lambda *a: seen.append(a))
    assert done["state"] == "completed" and done["records"] == 25
    assert seen == [(1, 3, 10), (2, 3, 20), (3, 3, 25)]
    _status, upload = await api.call("GET", f"/outbound/uploads/{done['uploadId']}")
    assert upload["totalParts"] == 3 and upload["partsReceived"] == [1, 2, 3]
    run = await asyncio.to_thread(client.wait_for_run, done["runId"], 30, 0.05)
    assert run["status"] == "delivered" and run["counts"]["valid"] == 25
    files = await asyncio.to_thread(fetch_outbox, api.sftp_port)
    assert files[f"orders-{run['runId']}.csv"].count(b"\n") == 26


async def test_a_failing_upload_is_aborted_and_the_error_is_clear(api: Api) -> None:
    client = Client(api.url, ADMIN_KEY)
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(client.upload_json, "demo", "demo-contacts", orders(0, 3))
    assert info.value.status == 422 and info.value.code == "pipeline_not_outbound"

    def records() -> Any:
        yield from orders(0, 5)
        raise RuntimeError("the app's source broke")

    with pytest.raises(RuntimeError):
        await asyncio.to_thread(client.upload_json, "demo", "demo-orders-out", records(), 2)
    # nothing was started: the records are cut into parts before the upload begins
    assert await api.runs() == []
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(Client(api.url, "wrong-key").runs)
    assert info.value.status == 401
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(Client("http://127.0.0.1:9", ADMIN_KEY).runs)
    assert info.value.code == "unreachable"


async def test_feedd_push_and_feedd_runs(api: Api, tmp_path: Path) -> None:
    jsonl = tmp_path / "orders.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in orders(0, 7)))
    array = tmp_path / "orders.json"
    array.write_text(json.dumps(orders(100, 3)))
    env = {"FEEDD_URL": api.url, "FEEDD_API_KEY": ADMIN_KEY, "PATH": "/usr/bin:/bin"}
    code, out, err = await cli("push", "--connection", "demo", "--pipeline", "demo-orders-out", "--part-size", "3",
                               "--wait", str(jsonl), env=env)
    assert code == 0, err
    assert "7 records" in out and ": delivered: 7 rows, 7 valid, 0 rejected" in out
    code, out, err = await cli("push", "--connection", "demo", "--pipeline", "demo-orders-out",
                               "--filename", "extra.csv", str(array), env=env)
    assert code == 0, err
    files: dict[str, bytes] = {}
    for _ in range(100):
        files = await asyncio.to_thread(fetch_outbox, api.sftp_port)
        if "extra.csv" in files:
            break
        await asyncio.sleep(0.05)
    assert b"O00100" in files["extra.csv"]
    code, out, err = await cli("runs", "list", env=env)
    assert code == 0 and out.count("delivered") == 2 and "RUN" in out.splitlines()[0]
    run_id = out.splitlines()[1].split()[0]
    code, out, _ = await cli("runs", "ack", run_id, env=env)
    assert code == 0 and json.loads(out)["acknowledgedAt"]
    code, out, _ = await cli("runs", "show", run_id, env=env)
    assert json.loads(out)["runId"] == run_id
    code, _, err = await cli("runs", "retry", run_id, env=env)
    assert code == 1 and "409" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"order_id": "x"}\nnot json\n')
    code, _, err = await cli("push", "--connection", "demo", "--pipeline", "demo-orders-out", str(bad), env=env)
    assert code == 1 and "line 2 is not valid JSON" in err
    code, _, err = await cli("runs", "list", env={"FEEDD_URL": api.url, "PATH": "/usr/bin:/bin"})
    assert code == 2 and "API key" in err


async def test_runs_list_shows_time_connection_and_error_code(api: Api, tmp_path: Path) -> None:
    import re
    import time

    client = Client(api.url, ADMIN_KEY)
    done = await asyncio.to_thread(client.upload_json, "acme", "acme-orders-out", orders(0, 2))
    await asyncio.to_thread(client.wait_for_run, done["runId"], 30, 0.05)
    # a file no pipeline takes: a failed run with an error code
    inbox = api.daemon.config.sftp.spaces_dir / "demo" / "inbox"
    (inbox / "notes.txt").write_text("hello\n")
    deadline = time.monotonic() + 30
    while len(await api.runs()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    env = {"FEEDD_URL": api.url, "FEEDD_API_KEY": ADMIN_KEY, "PATH": "/usr/bin:/bin"}
    code, out, err = await cli("runs", "list", env=env)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:9] == ["RUN", "CREATED", "(UTC)", "STATUS", "CONNECTION", "PIPELINE", "ROWS", "INVALID",
                                  "ERROR"]
    by_run = {line.split()[0]: line.split() for line in lines}
    stamp = re.compile(r"\d{4}-\d\d-\d\d")
    pushed = by_run[done["runId"]]
    assert stamp.fullmatch(pushed[1]) and re.fullmatch(r"\d\d:\d\d:\d\d", pushed[2])
    assert pushed[3:6] == ["delivered", "acme", "acme-orders-out"] and pushed[8] == "-"
    [failed] = [f for r, f in by_run.items() if r != done["runId"]]
    assert failed[3:5] == ["failed", "demo"] and failed[-3:] == ["no_matching_pipeline", "-", "inbox/notes.txt"]
