"""The running side API against its own /openapi.json, with schemathesis: no 5xx, and every response
(status, content type, headers, body) as the document says, for every operation on its own and for
sequences that follow the document's links (an upload to its parts, completion and run). A real
`feedd serve` on loopback."""

from __future__ import annotations

import contextlib
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.config import PositiveDataAcceptanceConfig
from schemathesis.generation.modes import GenerationMode

from feedd.config import load_config
from feedd.http.app import build_app
from tests.helpers import DEMO_HASH, Daemon
from tests.http.conftest import ADMIN_KEY, sha

# A key with the admin role: it may also create, change and delete connections, schemas and pipelines
# (ADMIN_KEY has every connection, with the app role).
ROOT_KEY = "root-admin-key-0123456789"
# Routes whose answers differ for an admin key: each runs with both kinds of key.
ADMIN_ROUTES = ("/connections", "/schemas", "/pipelines", "/audit", "/events")
OBJECT_ROUTES = ("/connections", "/schemas", "/pipelines")

# tus bodies are raw bytes: tell schemathesis how to make them
schemathesis.openapi.media_type("application/offset+octet-stream", st.binary(max_size=64))

CONFIG = f"""\
state_dir: ./var
log: {{level: info, format: json}}
sftp: {{listen: "127.0.0.1:0"}}
http:
  listen: "127.0.0.1:0"
  max_part_size: 64KiB
  api_keys:
    - {{name: admin, key_sha256: "{sha(ADMIN_KEY)}", connections: ["*"]}}
    - {{name: root, key_sha256: "{sha(ROOT_KEY)}", role: admin}}
schemas:
  order:
    fields:
      order_id: {{type: string, required: true}}
      amount: {{type: decimal, min: 0}}
connections:
  demo: {{password_hash: "{DEMO_HASH}"}}
pipelines:
  demo-out: {{connection: demo, schema: order, direction: outbound}}
  demo-in: {{connection: demo, schema: order, match: ["inbox/*.csv"]}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("openapi")
    (folder / "feedd.yaml").write_text(CONFIG)
    daemon = Daemon(folder / "feedd.yaml")
    try:
        address = daemon.wait_log("listening", service="http")["address"]
        yield f"http://{address}"
    finally:
        daemon.stop()


def test_the_document_is_openapi_3_1_and_covers_every_route(served: str, tmp_path: Path) -> None:
    with urllib.request.urlopen(f"{served}/openapi.json", timeout=10) as resp:  # noqa: S310 - loopback only
        doc = json.load(resp)
    assert doc["openapi"] == "3.1.0"
    (tmp_path / "feedd.yaml").write_text(CONFIG)
    app = build_app(load_config(tmp_path / "feedd.yaml", env={}), store=None)  # type: ignore[arg-type]
    every = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    # aiohttp answers HEAD for each GET by itself; only a HEAD of its own (tus) is a route to document
    routes = {(m, p) for m, p in every if m != "HEAD" or ("GET", p) not in every}
    routes = {(m, p) for m, p in routes if p != "/ui" and not p.startswith("/ui/")}  # the console: HTML, not API
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            if op.get("security") != []:
                assert "401" in op["responses"], (method, path)
            # the caps on requests in flight apply to every request, the minimum body rate to every body
            assert "429" in op["responses"], (method, path)
            if "requestBody" in op:
                assert "408" in op["responses"], (method, path)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for ops in doc["paths"].values():
        for op in ops.values():
            for response in op["responses"].values():
                assert all(link["operationId"] in ids for link in response.get("links", {}).values())


@pytest.mark.parametrize("key", [ADMIN_KEY, ROOT_KEY], ids=["app", "admin"])
def test_every_operation_conforms(served: str, key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    # A body in the config's shape is judged by the config's validator, not by the document (422 with the
    # problems' paths), and a version from an earlier request may be stale by now (412).
    managed = schemathesis.openapi.from_url(f"{served}/openapi.json")
    managed.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
        expected_statuses=["2XX", "401", "403", "404", "409", "412", "422", "429"])
    objects = {(r.ok().method, r.ok().path): r.ok() for r in managed.get_all_operations()
               if r.ok().path.startswith(OBJECT_ROUTES) and r.ok().path.count("/") <= 2}
    operations = [objects.get((r.ok().method, r.ok().path), r.ok()) for r in schema.get_all_operations()]
    assert len(operations) == 41
    for operation in _for(key, operations):
        # tus requests are checked for no 5xx only: their meaning lives in headers that a schema cannot
        # pin down (base64 metadata, offsets); tests/http/test_tus.py covers them with a real tus client
        checks = [not_a_server_error] if operation.path.startswith("/tus/") else None
        _conforms(operation, served, {"Authorization": f"Bearer {key}"}, checks)


@pytest.mark.parametrize("key", [ADMIN_KEY, ROOT_KEY], ids=["app", "admin"])
def test_invalid_requests_to_every_operation_are_refused_without_a_5xx(served: str, key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    for operation in _for(key, [result.ok() for result in schema.get_all_operations()]):
        with contextlib.suppress(Unsatisfiable):  # an operation with nothing to get wrong (no input at all)
            _conforms(operation, served, {"Authorization": f"Bearer {key}"}, [not_a_server_error],
                      GenerationMode.NEGATIVE, 15)


def _for(key: str, operations: list[Any]) -> list[Any]:
    """Every operation for the app key; for the admin key, those whose answers differ for it."""
    return operations if key == ADMIN_KEY else [op for op in operations if op.path.startswith(ADMIN_ROUTES)]


def _conforms(operation: Any, served: str, headers: dict[str, str], checks: list[Any] | None,
              mode: GenerationMode = GenerationMode.POSITIVE, examples: int = 25) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(base_url=served, headers=headers, checks=checks)

    check()


def _tus_or_all(case: Any) -> list[Any] | None:
    return [not_a_server_error] if case.operation.path.startswith("/tus/") else None


# Bodies a generator would hardly guess, so that sequences with the admin key create objects and go on to read,
# change and delete them (the per-route tests send everything else).
VALID = {"schemas": {"fields": {"code": {"type": "string"}}},
         "connections": {"enabled": False, "password_hash": DEMO_HASH},
         "pipelines": {"connection": "demo", "schema": "order", "direction": "outbound"}}


@pytest.mark.parametrize("key", [ADMIN_KEY, ROOT_KEY], ids=["app", "admin"])
def test_stateful_sequences_conform(served: str, key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE])  # invalid data: the per-route test
    # Valid data may still mean something wrong in this state: a part never sent (422), too many bytes (413)
    schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
        expected_statuses=["2XX", "401", "403", "404", "409", "412", "413", "422", "429"])
    headers = {"Authorization": f"Bearer {key}"}
    machine: Any = schema.as_state_machine()
    steps: list[tuple[str, int]] = []
    fresh = itertools.count()

    class Sequences(machine):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.created: list[tuple[str, str]] = []

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": served, "headers": headers}

        def before_call(self, case: Any) -> None:
            # Names a generator cannot guess: an upload of this config's outbound pipeline, of one part,
            # completed with that part, so that sequences reach a run.
            if (case.method, case.operation.path) == ("POST", "/outbound/uploads") and isinstance(case.body, dict):
                case.body.update(connectionName="demo", pipelineId="demo-out", totalParts=1)
            elif case.operation.path.endswith("/complete") and isinstance(case.body, dict):
                case.body["parts"] = [{"partNumber": 1}]
            elif case.operation.path.endswith("/parts/{partNumber}"):
                case.path_parameters["partNumber"] = 1
            elif case.method == "POST" and case.operation.path.lstrip("/") in VALID and isinstance(case.body, dict):
                # a name no earlier sequence used: every sequence meets the same state, as hypothesis expects
                case.body.clear()
                case.body.update(VALID[case.operation.path.lstrip("/")], name=f"seq-{next(fresh)}")

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            steps.append((f"{case.method} {case.operation.path}", response.status_code))
            if case.method == "POST" and response.status_code == 201 and case.operation.path.lstrip("/") in VALID:
                self.created.append((case.operation.path, case.body["name"]))

        def teardown(self) -> None:
            # what the sequence created is deleted, pipelines before what they use
            for path, name in sorted(self.created, key=lambda c: c[0] != "/pipelines"):
                request = urllib.request.Request(f"{served}{path}/{name}", method="DELETE", headers=headers)  # noqa: S310
                with contextlib.suppress(urllib.error.HTTPError), urllib.request.urlopen(request, timeout=10):  # noqa: S310
                    pass
            super().teardown()

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=_tus_or_all(case), additional_checks=additional_checks,
                                   transport_kwargs=kwargs or None, recorder=self.recorder)

    # The sequences are the same on every run, so that what the assertions below need is reached every time
    # (with the management routes there are many operations a random sequence may pick instead of an
    # upload's); the admin key's create, read, change and delete objects.
    Sequences.run(settings=settings(max_examples=40, stateful_step_count=6, deadline=None, database=None,
                                    suppress_health_check=list(HealthCheck), derandomize=True))
    # the links were followed: operations on an upload created earlier in the same sequence found it
    assert any("{uploadId}" in step and status != 404 for step, status in steps), sorted(set(steps))
    if key == ROOT_KEY:  # and an object created in a sequence was read, changed or deleted after
        assert any(step.endswith("{name}") and not step.startswith("GET /pipelines") and status < 300
                   for step, status in steps), sorted(set(steps))
