"""`feedd apply` and `feedd get` as a user runs them: real processes against a real `feedd serve`, the
outcome checked over the side API (objects, their versions, the audit log)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import DEMO_HASH, Daemon, run_cli, write
from tests.http.conftest import ADMIN_KEY, sha

ROOT_KEY = "root-admin-key-0123456789"

CONFIG = f"""\
state_dir: ./var
log: {{level: info, format: json}}
sftp: {{listen: "127.0.0.1:0"}}
http:
  listen: "127.0.0.1:0"
  api_keys:
    - {{name: app, key_sha256: "{sha(ADMIN_KEY)}", connections: ["*"]}}
    - {{name: root, key_sha256: "{sha(ROOT_KEY)}", role: admin}}
schemas:
  order:
    fields:
      order_id: {{type: string, required: true}}
connections:
  demo: {{password_hash: "{DEMO_HASH}"}}
"""

OBJECTS = """\
log: {level: debug}            # not an object: warned about, not applied
schemas:
  contact:
    fields:
      email: {type: email, required: true, aliases: [e-mail]}
connections:
  partner:
    password: partner-password-1
    quota: 10MiB
    allowed_ips: ["10.0.0.0/8"]
pipelines:
  partner-contacts:
    connection: partner
    schema: contact
    match: ["inbox/*.csv"]
    reports: true
    mappings:
      email: {from: "E-mail", transforms: [trim, lower]}
    destinations:
      - {type: webhook, url: "http://127.0.0.1:9/hook", secret: hook-secret-1}
"""


class Served:
    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder

    def call(self, method: str, path: str, key: str = ROOT_KEY) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, method=method,  # noqa: S310 - loopback only
                                     headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
                text = resp.read().decode()
                return resp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode())

    def feedd(self, *args: str, key: str = ROOT_KEY) -> tuple[int, str, str]:
        done = run_cli(*args, env={"FEEDD_URL": self.url, "FEEDD_API_KEY": key}, cwd=self.folder)
        return done.returncode, done.stdout, done.stderr

    def apply(self, text: str, *flags: str, key: str = ROOT_KEY) -> tuple[int, str, str]:
        path = write(self.folder, "objects.yaml", text)
        return self.feedd("apply", "-f", str(path), *flags, key=key)

    def audit(self) -> list[dict[str, Any]]:
        status, page = self.call("GET", "/audit?limit=1000")
        assert status == 200, page
        return page["data"]  # type: ignore[no-any-return]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    write(tmp_path, "feedd.yaml", CONFIG)
    daemon = Daemon(tmp_path / "feedd.yaml")
    try:
        yield Served(f"http://127.0.0.1:{daemon.http_port()}", tmp_path)
    finally:
        daemon.stop()


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


def test_apply_creates_in_order_then_changes_nothing(served: Served) -> None:
    code, out, err = served.apply(OBJECTS)
    assert code == 0, err
    # schemas, then connections, then pipelines: each refers to the ones before
    assert lines(out) == ["schema contact: created", "connection partner: created",
                          "pipeline partner-contacts: created"]
    assert "top-level key 'log' is not applied" in err
    status, pipe = served.call("GET", "/pipelines/partner-contacts")
    assert status == 200 and pipe["source"] == "api" and pipe["object"]["reports"] is True
    assert pipe["object"]["destinations"][0]["secret"] == "<redacted>"
    status, conn = served.call("GET", "/connections/partner")
    assert conn["object"] == {"quota": "10MiB", "allowed_ips": ["10.0.0.0/8"], "hasPassword": True}
    versions = {s: served.call("GET", f"/{s}")[1]["data"] for s in ("schemas", "connections", "pipelines")}
    entries = len(served.audit())

    code, out, err = served.apply(OBJECTS)  # the plain password is the stored one: nothing to change
    assert code == 0, err
    assert lines(out) == ["schema contact: unchanged", "connection partner: unchanged",
                          "pipeline partner-contacts: unchanged"]
    assert {s: served.call("GET", f"/{s}")[1]["data"] for s in versions} == versions
    assert len(served.audit()) == entries


def test_a_change_in_the_file_updates_the_whole_object(served: Served) -> None:
    assert served.apply(OBJECTS)[0] == 0
    # quota changed; `reports` and the mappings no longer in the file: back to their defaults
    changed = (OBJECTS.replace("quota: 10MiB", "quota: 20MiB").replace("    reports: true\n", "")
               .replace('    mappings:\n      email: {from: "E-mail", transforms: [trim, lower]}\n', ""))
    code, out, err = served.apply(changed)
    assert code == 0, err
    assert lines(out) == ["schema contact: unchanged", "connection partner: updated",
                          "pipeline partner-contacts: updated"]
    _, pipe = served.call("GET", "/pipelines/partner-contacts")
    assert "reports" not in pipe["object"] and "mappings" not in pipe["object"] and pipe["mappings"] == {}
    assert pipe["version"] == 2
    # the secret the file gives again is the stored one
    assert pipe["object"]["destinations"] == [{"type": "webhook", "url": "http://127.0.0.1:9/hook",
                                               "secret": "<redacted>"}]
    _, conn = served.call("GET", "/connections/partner")
    assert conn["object"]["quota"] == "20MiB" and conn["object"]["hasPassword"] is True
    assert [(e["action"], e["kind"], e["name"]) for e in served.audit()[:2]] == [
        ("update", "pipeline", "partner-contacts"), ("update", "connection", "partner")]


def test_dry_run_reports_what_would_change_and_writes_nothing(served: Served) -> None:
    assert served.apply(OBJECTS)[0] == 0
    before = {s: served.call("GET", f"/{s}")[1]["data"] for s in ("schemas", "connections", "pipelines")}
    entries = len(served.audit())
    more = OBJECTS.replace("quota: 10MiB", "quota: 20MiB") + "  partner-more:\n    connection: partner\n" \
        "    schema: contact\n    match: [\"inbox/more/*.csv\"]\n"
    code, out, err = served.apply(more, "--dry-run", "--prune")
    assert code == 0, err
    assert lines(out) == ["schema contact: unchanged (dry run)", "connection partner: updated (dry run)",
                          "pipeline partner-contacts: unchanged (dry run)", "pipeline partner-more: created (dry run)"]
    assert {s: served.call("GET", f"/{s}")[1]["data"] for s in before} == before
    assert len(served.audit()) == entries
    assert served.call("GET", "/pipelines/partner-more")[0] == 404


def test_prune_deletes_the_managed_objects_the_file_does_not_name(served: Served) -> None:
    assert served.apply(OBJECTS)[0] == 0
    # a file with no section at all is most likely the wrong file: pruning with it is refused
    code, out, err = served.apply("log: {level: info}\n", "--prune")
    assert code == 1 and out == "" and "--prune would delete every object" in err
    assert served.call("GET", "/pipelines/partner-contacts")[0] == 200
    only_schema = "schemas:\n  contact:\n    fields:\n      email: {type: email, required: true, aliases: [e-mail]}\n"
    code, out, err = served.apply(only_schema, "--prune", "--dry-run")
    assert code == 0, err
    assert "pipeline partner-contacts: deleted (dry run)" in lines(out)
    assert served.call("GET", "/pipelines/partner-contacts")[0] == 200
    code, out, err = served.apply(only_schema, "--prune")
    assert code == 0, err
    # pipelines first: the connection is in use until its pipeline is gone
    assert lines(out) == ["schema contact: unchanged", "pipeline partner-contacts: deleted",
                          "connection partner: deleted"]
    assert served.call("GET", "/pipelines/partner-contacts")[0] == 404
    assert served.call("GET", "/connections/partner")[0] == 404
    # the config file's objects are never pruned
    assert served.call("GET", "/connections/demo")[0] == 200 and served.call("GET", "/schemas/order")[0] == 200


def test_get_yaml_applied_again_changes_nothing(served: Served) -> None:
    assert served.apply(OBJECTS)[0] == 0
    entries = len(served.audit())
    for section, name in (("pipelines", "partner-contacts"), ("connections", "partner"), ("schemas", "contact")):
        code, out, err = served.feedd("get", section, name, "-o", "yaml")
        assert code == 0, err
        shown = yaml.safe_load(out)
        assert list(shown) == [section] and list(shown[section]) == [name]
        assert "hasPassword" not in shown[section][name]  # not a config key
        code, applied, err = served.apply(out)
        assert code == 0, err
        assert lines(applied) == [f"{section[:-1]} {name}: unchanged"]
    assert len(served.audit()) == entries
    # the whole section, as JSON (YAML reads it too): the file's objects are listed with the API's
    code, out, err = served.feedd("get", "connections", "-o", "json")
    assert code == 0, err
    assert json.loads(out) == {"connections": {"demo": {}, "partner": {
        "quota": "10MiB", "allowed_ips": ["10.0.0.0/8"]}}}
    code, _, err = served.feedd("get", "pipelines", "missing")
    assert code == 1 and "404" in err


def test_an_invalid_object_prints_its_path_and_message_and_the_rest_is_applied(served: Served) -> None:
    bad = OBJECTS.replace("transforms: [trim, lower]", "transforms: [trim, lowr]") + (
        "  orders:\n    connection: demo\n    schema: order\n    direction: outbound\n")
    code, out, err = served.apply(bad)
    assert code == 1
    assert "pipeline partner-contacts: mappings.email.transforms[1]: unknown transform 'lowr' " \
           "(did you mean 'lower'?)" in lines(err)
    assert lines(out) == ["schema contact: created", "connection partner: created", "pipeline orders: created"]
    assert served.call("GET", "/pipelines/partner-contacts")[0] == 404
    assert served.call("GET", "/pipelines/orders")[0] == 200


def test_the_config_files_objects_and_app_keys_are_refused(served: Served) -> None:
    provisioned = "connections:\n  demo: {enabled: false}\nschemas:\n  extra:\n    fields:\n      a: {type: string}\n"
    code, out, err = served.apply(provisioned)
    assert code == 1
    assert lines(out) == ["schema extra: created"]
    assert "connection demo: 409 provisioned" in err
    _, demo = served.call("GET", "/connections/demo")
    assert demo["enabled"] is True
    code, out, err = served.apply(OBJECTS, key=ADMIN_KEY)  # an app key may not manage objects
    assert code == 1 and out == "" and "schema contact: 403 forbidden" in err


def test_a_body_nested_too_deep_is_refused_not_a_server_error(served: Served) -> None:
    # well under what the JSON parser takes, far over what any config object needs
    deep = "[" * 500 + "]" * 500
    for method, path, body in (("POST", "/schemas", f'{{"name": "deep", "fields": {deep}}}'),
                               ("PATCH", "/schemas/contact", f'{{"fields": {deep}}}')):
        if method == "PATCH":
            assert served.apply(OBJECTS)[0] == 0
        req = urllib.request.Request(served.url + path, data=body.encode(), method=method,  # noqa: S310
                                     headers={"Authorization": f"Bearer {ROOT_KEY}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)  # noqa: S310 - loopback only
        assert info.value.code == 422
        error = json.loads(info.value.read())["error"]
        assert error["code"] == "invalid_config" and "nested deeper" in error["details"][0]["message"]
    assert served.call("GET", "/schemas/deep")[0] == 404


def test_an_encoding_name_that_is_no_text_is_refused_not_a_server_error(served: Served) -> None:
    body = ('{"name": "odd", "connection": "demo", "schema": "order", "match": ["inbox/*"], '
            '"format": {"encoding": "\\ud800"}}')  # a lone surrogate: valid JSON, no text
    req = urllib.request.Request(served.url + "/pipelines", data=body.encode(), method="POST",  # noqa: S310
                                 headers={"Authorization": f"Bearer {ROOT_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)  # noqa: S310 - loopback only
    assert info.value.code == 422
    assert [d["path"] for d in json.loads(info.value.read())["error"]["details"]] == ["format.encoding"]
