"""Connections, schemas and pipelines managed over the API, as an operations team onboards a partner without
touching a file: created live (the partner logs in with OpenSSH at once and its file is processed), kept
across restarts, changed and disabled live, validated with the config file's own messages, refused where a
role, the file or a reference says no, and every change in the audit log without a secret."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from feedd.config import load_config
from feedd.daemon import Daemon
from tests.helpers import DEMO_HASH
from tests.http.conftest import DEMO_KEY, Api
from tests.sftp.conftest import needs_sftp

SCHEMA = {"name": "person", "fields": {"email": {"type": "email", "required": True},
                                       "name": {"type": "string"}}}
PARTNER_PASSWORD = "globex-secret-password"


def connection(pubkey: str, **extra: Any) -> dict[str, Any]:
    return {"name": "globex", "authorized_keys": [pubkey], "password": PARTNER_PASSWORD, **extra}


PIPELINE = {"name": "globex-people", "connection": "globex", "schema": "person", "match": ["inbox/*.csv"],
            "mappings": {"email": {"from": "E-mail", "transforms": ["trim", "lower"]}}}


async def sftp_put(port: int, key: Path, local: Path, remote: str, cwd: Path, user: str = "globex") -> \
        subprocess.CompletedProcess[str]:
    """OpenSSH's sftp, in a thread: the daemon it talks to runs on this test's event loop."""
    script = cwd / "batch.txt"
    script.write_text(f"put {local} {remote}\n")
    return await asyncio.to_thread(
        subprocess.run,
        ["sftp", "-b", str(script), "-P", str(port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "LogLevel=ERROR", f"{user}@127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def new_key(folder: Path, name: str) -> tuple[Path, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = folder / name
    key.write_private_key(str(path))
    path.chmod(0o600)
    return path, key.export_public_key().decode().strip()


async def onboard(api: Api, pubkey: str) -> None:
    for section, body in (("schemas", SCHEMA), ("connections", connection(pubkey)), ("pipelines", PIPELINE)):
        status, answer = await api.call("POST", f"/{section}", json=body)
        assert status == 201, answer
        assert answer["source"] == "api" and answer["version"] == 1


async def wait_for_run(api: Api, pipeline: str, within: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, page = await api.call("GET", f"/runs?pipeline={pipeline}")
        assert status == 200, page
        if page["data"]:
            return await api.wait_run(page["data"][0]["runId"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no run of {pipeline}")


@needs_sftp
async def test_a_partner_onboarded_over_the_api_uploads_at_once_and_survives_a_restart(
        start_api: Callable[..., Any], tmp_path: Path, host_key: Path) -> None:
    api: Api = await start_api()
    key, pubkey = new_key(tmp_path, "globex_key")
    await onboard(api, pubkey)
    people = tmp_path / "people.csv"
    people.write_text("E-mail,name\n  Ann@Example.com ,Ann\nnot-an-email,Bob\n")
    done = await sftp_put(api.sftp_port, key, people, "inbox/people.csv", tmp_path)
    assert done.returncode == 0, done.stderr
    run = await wait_for_run(api, "globex-people")
    assert run["status"] == "completed" and run["counts"] == {"rows": 2, "valid": 1, "invalid": 1, "warned": 0}
    status, records = await api.call("GET", f"/runs/{run['runId']}/records")
    assert status == 200 and json.loads(records.splitlines()[0])["email"] == "ann@example.com"

    # A restart finds the objects in the store and uses them as before.
    await api.daemon.stop()
    daemon = Daemon(load_config(api.config_path, env={}), drain_seconds=2, workers=1)
    await daemon.start()
    try:
        assert daemon.http is not None and daemon.sftp is not None
        api = Api(daemon, f"http://127.0.0.1:{daemon.http.addresses[0].port}", api.session, api.config_path)
        status, got = await api.call("GET", "/connections/globex")
        assert status == 200 and got["source"] == "api" and got["object"]["hasPassword"] is True
        assert {p["name"]: p["source"] for p in (await api.call("GET", "/pipelines"))[1]["data"]}["globex-people"] \
            == "api"
        again = await sftp_put(api.sftp_port, key, people, "inbox/people2.csv", tmp_path)
        assert again.returncode == 0, again.stderr
    finally:
        await daemon.stop()


@needs_sftp
async def test_keys_changed_and_a_connection_disabled_over_the_api_apply_at_the_next_login(
        start_api: Callable[..., Any], tmp_path: Path) -> None:
    api: Api = await start_api()
    old_key, old_pub = new_key(tmp_path, "old_key")
    new, new_pub = new_key(tmp_path, "new_key")
    await onboard(api, old_pub)
    sample = tmp_path / "a.csv"
    sample.write_text("E-mail\na@example.com\n")
    assert (await sftp_put(api.sftp_port, new, sample, "inbox/a.csv", tmp_path)).returncode != 0

    status, got = await api.call("PATCH", "/connections/globex", json={"authorized_keys": [new_pub]})
    assert status == 200 and got["version"] == 2 and got["changed"] is True
    assert (await sftp_put(api.sftp_port, new, sample, "inbox/a.csv", tmp_path)).returncode == 0
    refused = await sftp_put(api.sftp_port, old_key, sample, "inbox/b.csv", tmp_path)
    assert refused.returncode != 0  # the list was replaced, not merged

    status, got = await api.call("PATCH", "/connections/globex", json={"enabled": False},
                                 headers={"If-Match": '"2"'})
    assert status == 200 and got["enabled"] is False
    assert (await sftp_put(api.sftp_port, new, sample, "inbox/c.csv", tmp_path)).returncode != 0
    # a writer holding the old version is refused, and nothing changes
    status, stale = await api.call("PATCH", "/connections/globex", json={"enabled": True},
                                   headers={"If-Match": "2"})
    assert status == 412 and stale["error"]["code"] == "precondition_failed"
    assert (await api.call("GET", "/connections/globex"))[1]["enabled"] is False


async def test_invalid_bodies_get_the_config_files_messages_with_their_paths(api: Api, demo_key: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, pubkey = demo_key
    assert (await api.call("POST", "/schemas", json=SCHEMA))[0] == 201
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("pipelines", {**PIPELINE, "connection": "demo",
                       "mappings": {"email": {"from": "E-mail", "transforms": ["lowr"]}}},
         "mappings.email.transforms[0]", "did you mean 'lower'"),
        ("pipelines", {**PIPELINE, "connection": "demo", "schema": "persn"}, "schema", "did you mean 'person'"),
        ("connections", {"name": "globex", "authorized_keys": ["ssh-ed25519 not-a-key"]}, "authorized_keys[0]",
         "not a valid SSH public key"),
        ("connections", {"name": "globex", "authorized_keys": [pubkey], "quota": "lots"}, "quota", ""),
        ("connections", {"name": "globex", "authorized_keys": [pubkey], "enabld": False}, "enabld",
         "did you mean 'enabled'"),
        ("connections", {"name": "Bad Name", "authorized_keys": [pubkey]}, "", "invalid connection name"),
        # the daemon's environment is not readable through a body
        ("connections", {"name": "globex", "authorized_keys": [pubkey], "quota": "${FEEDD_TEST_SECRET}"},
         "quota", "only in the config file"),
    ]
    monkeypatch.setenv("FEEDD_TEST_SECRET", "do-not-show-me")
    for section, body, path, message in cases:
        status, answer = await api.call("POST", f"/{section}", json=body)
        assert status == 422, (body, answer)
        error = answer["error"]
        assert error["code"] == "invalid_config"
        assert any(d["path"] == path and message in d["message"] for d in error["details"]), (path, error)
        assert "do-not-show-me" not in json.dumps(answer)
    status, answer = await api.call("POST", "/connections", data=b"{not json", headers={
        "Content-Type": "application/json"})
    assert status == 400
    # nothing was created by any of them
    assert [c["name"] for c in (await api.call("GET", "/connections"))[1]["data"]] == ["demo", "acme"]


async def test_roles_and_provisioned_objects_are_refused(api: Api, demo_key: Any) -> None:
    _, pubkey = demo_key
    status, answer = await api.call("POST", "/schemas", json=SCHEMA, key=DEMO_KEY)
    assert status == 403 and "admin" in answer["error"]["message"]
    assert (await api.call("GET", "/audit", key=DEMO_KEY))[0] == 403
    assert (await api.call("GET", "/events", key=DEMO_KEY))[0] == 403
    # objects from the file: read-only, and their names are taken
    status, answer = await api.call("PATCH", "/connections/demo", json={"enabled": False})
    assert status == 409 and answer["error"]["code"] == "provisioned"
    status, answer = await api.call("DELETE", "/schemas/order")
    assert status == 409 and answer["error"]["code"] == "provisioned"
    status, answer = await api.call("POST", "/connections", json={"name": "demo", "authorized_keys": [pubkey]})
    assert status == 409 and answer["error"]["code"] == "provisioned"
    # ... but the runtime switch of a file's pipeline stays, for its app key too
    status, answer = await api.call("PATCH", "/pipelines/demo-contacts", json={"active": False}, key=DEMO_KEY)
    assert status == 200 and answer["active"] is False and answer["source"] == "file"
    status, got = await api.call("GET", "/connections/demo")
    assert got["object"] == {"hasPassword": True} and "argon2" not in json.dumps(got)


async def test_delete_refuses_while_referred_to_and_keeps_the_space(api: Api, tmp_path: Path,
                                                                     demo_key: Any) -> None:
    _, pubkey = demo_key
    await onboard(api, pubkey)
    space = api.daemon.config.sftp.spaces_dir / "globex"
    assert (space / "inbox").is_dir()
    for path, used_by in (("/schemas/person", "globex-people"), ("/connections/globex", "globex-people")):
        status, answer = await api.call("DELETE", path)
        assert status == 409 and answer["error"]["code"] == "in_use" and used_by in answer["error"]["message"]
    # a run not finished yet holds its pipeline: inactive, the file is held
    assert (await api.call("PATCH", "/pipelines/globex-people", json={"active": False}))[0] == 200
    (space / "inbox" / "x.csv").write_text("E-mail\na@example.com\n")
    deadline = time.monotonic() + 30
    while not (await api.call("GET", "/runs?pipeline=globex-people&status=held"))[1]["data"]:
        assert time.monotonic() < deadline, "the file was not taken"
        await asyncio.sleep(0.05)
    status, answer = await api.call("DELETE", "/pipelines/globex-people")
    assert status == 409 and "held" in answer["error"]["message"]
    # once it has run, the pipeline, then the schema and the connection can go
    assert (await api.call("PATCH", "/pipelines/globex-people", json={"active": True}))[0] == 200
    await wait_for_run(api, "globex-people")
    for path in ("/pipelines/globex-people", "/schemas/person", "/connections/globex"):
        status, answer = await api.call("DELETE", path)
        assert status == 204, (path, answer)
        assert (await api.call("GET", path))[0] == 404
    assert (space / "inbox").is_dir()  # the partner's files are not deleted with its connection


async def test_every_change_is_audited_without_secrets(api: Api, demo_key: Any) -> None:
    _, pubkey = demo_key
    await onboard(api, pubkey)
    status, got = await api.call("PATCH", "/connections/globex", json={"password": "another-password-123"})
    assert status == 200 and got["changed"] is True
    # the same password again changes nothing: no new version, no audit entry
    status, got = await api.call("PATCH", "/connections/globex", json={"password": "another-password-123"})
    assert status == 200 and got["changed"] is False and got["version"] == 2
    assert await api.daemon.reload()
    status, page = await api.call("GET", "/audit?limit=3")
    assert status == 200 and page["nextCursor"]
    status, rest = await api.call("GET", f"/audit?cursor={page['nextCursor']}")
    entries = page["data"] + rest["data"]
    assert [(e["action"], e["kind"], e["name"]) for e in entries] == [
        ("reload", "config", str(api.config_path)), ("update", "connection", "globex"),
        ("create", "pipeline", "globex-people"), ("create", "connection", "globex"),
        ("create", "schema", "person")]
    assert {e["actor"] for e in entries[1:]} == {"admin"}
    assert entries[3]["after"]["authorized_keys"] == [pubkey] and entries[3]["after"]["hasPassword"] is True
    text = json.dumps(entries)
    for secret in (PARTNER_PASSWORD, "another-password-123", "argon2"):
        assert secret not in text
    stored = await api.daemon.store.managed_objects()  # type: ignore[union-attr]
    assert all(PARTNER_PASSWORD not in json.dumps(o.body) for o in stored)


async def test_config_changed_events_name_the_change(start_api: Callable[..., Any], demo_key: Any) -> None:
    api: Api = await start_api(extra='webhooks:\n  - {url: "http://127.0.0.1:9/events", events: ["config.*"]}\n')
    assert (await api.call("POST", "/schemas", json=SCHEMA))[0] == 201
    events = await api.daemon.store.events_of("config.changed")  # type: ignore[union-attr]
    assert [json.loads(e.body)["data"] for e in events] == [
        {"kind": "schema", "name": "person", "action": "create", "actor": "admin"}]


async def test_a_file_reload_that_clashes_with_a_managed_name_is_refused(api: Api, demo_key: Any) -> None:
    _, pubkey = demo_key
    await onboard(api, pubkey)
    text = api.config_path.read_text()
    api.config_path.write_text(text.replace("connections:\n", f"connections:\n  globex:\n    password_hash: "
                                                              f'"{DEMO_HASH}"\n', 1))
    assert not await api.daemon.reload()
    status, got = await api.call("GET", "/connections/globex")
    assert status == 200 and got["source"] == "api"

    # At start, the clash is a bad config: exit 2, naming both places.
    await api.daemon.stop()
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "feedd", "serve", "-c",
                                                    str(api.config_path)],
                                   capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "connections.globex" in done.stderr and "feedd.yaml:" in done.stderr and "the store" in done.stderr


@pytest.mark.parametrize("section", ["connections", "schemas", "pipelines"])
async def test_unknown_objects_are_404(api: Api, section: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        status, answer = await api.call(method, f"/{section}/nope", json={"x": 1} if method == "PATCH" else None)
        assert status == 404, (method, answer)
