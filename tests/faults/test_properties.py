"""Property tests (Hypothesis): no generated path leaves a space, no generated row escapes as an
exception, and the multipart and tus state machines agree with a simple reference model."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from asyncssh import SFTPError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedd.config.values import FieldSpec, FieldType, Transform
from feedd.pipeline.transforms import TransformError, compile_transforms
from feedd.pipeline.validate import FieldError, compile_field
from feedd.sftp.jail import Jail, Op
from tests.http.conftest import ADMIN_KEY
from tests.http.test_openapi import served

__all__ = ["served"]

SEGMENTS = st.sampled_from(["..", ".", "", "inbox", "outbox", "out", "link", "acme2", "a\x00b", "a\nb", "é", "x" * 300,
                            "..\\..", "%2e%2e", "~", "/"])
PATHS = st.lists(st.one_of(SEGMENTS, st.text(alphabet="ab.", max_size=4), st.text(max_size=12)),
                 max_size=8).map("/".join)
FAST = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A space with links planted on disk: out of the space, to a sibling space, and a loop."""
    base = tmp_path_factory.mktemp("jail")
    root = base / "acme"
    (root / "inbox" / "sub").mkdir(parents=True)
    (root / "outbox").mkdir()
    (base / "acme2" / "inbox").mkdir(parents=True)
    (base / "secret.txt").write_text("not yours")
    os.symlink(base, root / "inbox" / "link")
    os.symlink(base / "acme2", root / "inbox" / "sub" / "acme2")
    os.symlink(root / "inbox" / "loop", root / "inbox" / "loop")
    return root


@FAST
@given(path=PATHS, op=st.sampled_from(list(Op)), follow=st.booleans())
def test_no_path_leaves_the_space(space: Path, path: str, op: Op, follow: bool) -> None:
    jail = Jail(space)
    try:
        target = jail.resolve(path.encode("utf-8", "surrogateescape"), op, follow=follow)
    except SFTPError:
        return  # refused with an SFTP status: the session lives on
    root = os.path.realpath(space)
    # following links, the target itself is inside; not following (lstat, remove, rename of a link
    # itself), its folder is
    where = os.path.realpath(target.real if follow or target.real == root else os.path.dirname(target.real))
    assert os.path.commonpath([root, where]) == root
    assert os.path.commonpath([root, os.path.abspath(target.local)]) == root
    assert target.virtual.startswith("/") and ".." not in target.virtual.split("/")


def test_figures_of_the_path_fuzzing(space: Path) -> None:
    """The containment property again, counted: how many generated paths resolved, and none escaped."""
    jail, root = Jail(space), os.path.realpath(space)
    seen = {"paths": 0, "resolved": 0, "escapes": 0}

    @FAST
    @given(path=PATHS, op=st.sampled_from(list(Op)))
    def count(path: str, op: Op) -> None:
        seen["paths"] += 1
        try:
            target = jail.resolve(path.encode("utf-8", "surrogateescape"), op)
        except SFTPError:
            return
        seen["resolved"] += 1
        if os.path.commonpath([root, os.path.realpath(target.real)]) != root:
            seen["escapes"] += 1

    count()
    print(f"\nFUZZ paths={seen['paths']} resolved={seen['resolved']} escapes={seen['escapes']}")
    assert seen["escapes"] == 0 and seen["resolved"] > 0


VALUES = st.one_of(st.none(), st.text(max_size=40), st.integers(), st.floats(allow_nan=True), st.booleans(),
                   st.sampled_from(["2024-02-30", "1e400", "-0", " 7 ", "NaN", "inf", "12,5", "1.234,50", "\ufeff1"]))
SPECS = st.builds(FieldSpec, name=st.just("f"), type=st.sampled_from(list(FieldType)), required=st.booleans(),
                  values=st.just(("a", "b")))
TRANSFORMS = st.lists(st.sampled_from([
    Transform("trim"), Transform("lower"), Transform("upper"), Transform("title"), Transform("digits"),
    Transform("null_if", ("", "n/a")), Transform("replace", ("[0-9]", "#")), Transform("date", "%m/%d/%Y"),
    Transform("datetime", "%Y-%m-%d %H:%M"), Transform("number", (",", ".")), Transform("truncate", 3),
    Transform("boolean", (("y",), ("n",))), Transform("map", {"a": "b"}), Transform("split", (" ", 1)),
    Transform("default", "x")]), max_size=4)


@FAST
@given(value=VALUES, spec=SPECS, transforms=TRANSFORMS)
def test_no_value_escapes_a_row_as_an_unexpected_exception(value: Any, spec: FieldSpec,
                                                            transforms: list[Transform]) -> None:
    transform = compile_transforms(transforms)
    check = compile_field(spec)
    try:
        out = check(transform(value) if transform else value)
    except (TransformError, FieldError) as exc:
        message = str(exc)  # a row error with a message, never anything else
        assert message
        return
    json.dumps(out)  # whatever passes is JSON-ready output


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=2000), name=st.sampled_from(["x.csv", "x.json", "x.jsonl", "x.tsv", "x.gz", "x"]))
def test_readers_fail_cleanly_on_any_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes, name: str) -> None:
    from feedd.config.values import FormatConfig
    from feedd.pipeline.read import ReadError, open_rows

    path = tmp_path_factory.mktemp("bytes") / name
    path.write_bytes(data)
    try:
        _, _, rows = open_rows(path, FormatConfig())
        with rows:
            for number, cells in rows:
                assert number >= 1 and len(cells) <= 10_000
    except ReadError as exc:
        code, message = exc.code, exc.message
        assert code in ("unreadable_input", "line_too_long", "too_many_columns", "json_too_deep")
        assert message


class Reference:
    """The multipart contract, as plainly as it can be said."""

    def __init__(self, total: int) -> None:
        self.total, self.state, self.parts = total, "initiated", {}

    def put(self, n: int, etag: str) -> int:
        if self.state not in ("initiated", "uploading"):
            return 409
        if not 1 <= n <= self.total:
            return 400
        self.parts[n], self.state = etag, "uploading"
        return 200

    def complete(self, listed: list[int]) -> int:
        if self.state not in ("initiated", "uploading"):
            return 409
        if set(range(1, self.total + 1)) - set(self.parts) or set(listed) != set(range(1, self.total + 1)):
            return 422
        self.state = "completed"
        return 200

    def abort(self) -> int:
        if self.state not in ("initiated", "uploading"):
            return 409
        self.state = "aborted"
        return 200


def call(method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


AUTH = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
MULTIPART_STEP = st.one_of(st.tuples(st.just("put"), st.integers(0, 4)),
                           st.tuples(st.just("complete"), st.integers(2, 3)), st.tuples(st.just("abort"), st.just(0)))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(steps=st.lists(MULTIPART_STEP, min_size=1, max_size=8))
def test_multipart_matches_its_reference_model(served: str, steps: list[tuple[str, int]]) -> None:
    status, _, body = call("POST", f"{served}/outbound/uploads", AUTH, json.dumps(
        {"connectionName": "demo", "pipelineId": "demo-out", "totalParts": 3}).encode())
    assert status == 201
    uid = json.loads(body)["uploadId"]
    model = Reference(3)
    for action, n in steps:
        if action == "put":
            part = json.dumps([{"order_id": f"O{n}", "amount": "1"}]).encode()
            status, _, _ = call("PUT", f"{served}/outbound/uploads/{uid}/parts/{n}", AUTH, part)
            expected = model.put(n, hashlib.sha256(part).hexdigest())
        elif action == "complete":
            listed = list(range(1, n + 1))
            status, _, _ = call("POST", f"{served}/outbound/uploads/{uid}/complete", AUTH,
                                json.dumps({"parts": [{"partNumber": p} for p in listed]}).encode())
            expected = model.complete(listed)
        else:
            status, _, _ = call("POST", f"{served}/outbound/uploads/{uid}/abort", AUTH)
            expected = model.abort()
        assert status == expected, (steps, action, n)
        _, _, body = call("GET", f"{served}/outbound/uploads/{uid}", AUTH)
        state = json.loads(body)
        assert (state["state"], state["partsReceived"]) == (model.state, sorted(model.parts)), steps


TUS_STEP = st.one_of(st.tuples(st.just("patch"), st.integers(0, 12), st.integers(-3, 3), st.booleans()),
                     st.tuples(st.just("head"), st.just(0), st.just(0), st.just(False)),
                     st.tuples(st.just("delete"), st.just(0), st.just(0), st.just(False)))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(steps=st.lists(TUS_STEP, min_size=1, max_size=10))
def test_tus_matches_its_reference_model(served: str, steps: list[tuple[str, int, int, bool]]) -> None:
    """The reference: an offset that only moves by whole, checksum-true chunks sent at the right offset."""
    content = b"order_id,amount\nO1,1.00\n"  # 25 bytes, a CSV the inbound pipeline accepts
    v = {"Authorization": f"Bearer {ADMIN_KEY}", "Tus-Resumable": "1.0.0"}
    md = ",".join(f"{k} {base64.b64encode(x.encode()).decode()}" for k, x in
                  {"connection": "demo", "pipeline": "demo-in", "filename": "t.csv"}.items())
    status, headers, _ = call("POST", f"{served}/tus/", {**v, "Upload-Length": str(len(content)),
                                                         "Upload-Metadata": md})
    assert status == 201
    url = headers["Location"]
    offset, state = 0, "open"
    for action, size, skew, corrupt in steps:
        if action == "patch":
            at = max(0, offset + skew)
            chunk = content[at:at + size]
            checksum = hashlib.sha256(chunk + (b"!" if corrupt else b"")).digest()
            sent = {**v, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(at),
                    "Upload-Checksum": f"sha256 {base64.b64encode(checksum).decode()}"}
            status, headers, _ = call("PATCH", url, sent, chunk)
            if state == "gone":
                expected = 410
            elif at != offset or state == "done":
                expected = 409
            elif corrupt:
                expected = 460
            else:
                expected, offset = 204, offset + len(chunk)
                state = "done" if offset == len(content) else state
            assert status == expected, (steps, action, at, offset)
        elif action == "head":
            status, headers, _ = call("HEAD", url, v)
            assert status == (410 if state == "gone" else 200), steps
            if status == 200:
                assert headers["Upload-Offset"] == str(offset)
        else:
            status, _, _ = call("DELETE", url, v)
            expected = 410 if state == "gone" else 409 if state == "done" else 204
            assert status == expected, steps
            state = "gone" if expected == 204 else state
