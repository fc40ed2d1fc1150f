"""A small synchronous client for the side API (README, "Side API (HTTP)" and "Commands"), standard library only.

    from feedd.client import Client
    upload = Client("http://127.0.0.1:8080", api_key).upload_json("acme", "acme-orders-out", records)
    run = Client(...).wait_for_run(upload["runId"])

`upload_json` takes any iterable of objects: it cuts them into parts of `part_size` records, kept in a
temporary folder until they are sent (memory stays flat whatever the count), starts the upload, sends the
parts, completes it, and aborts it if anything fails on the way.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

TERMINAL = ("delivered", "failed")
Progress = Callable[[int, int, int], None]  # (parts sent, total parts, records sent)


class ClientError(Exception):
    """An error answer from the API (status, code and message from its body, and the `details` of an invalid
    object: [{path, message}]), or no answer at all."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class Client:
    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0, cafile: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._ssl = _tls_context(cafile) if self.url.startswith("https://") else None

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={  # noqa: S310 - http(s) only
            "Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json",
            "Accept": "application/json", **(headers or {})})
        if not self.url.startswith(("http://", "https://")):
            raise ClientError(0, "bad_url", f"{self.url!r} is not an http(s) URL")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:  # noqa: S310 - checked above
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read().decode())["error"]
                details = error.get("details") if isinstance(error.get("details"), list) else None
                raise ClientError(exc.code, error["code"], error["message"], details) from None
            except (ValueError, KeyError, TypeError):
                raise ClientError(exc.code, "http_error", str(exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(0, "unreachable", f"{self.url}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(text) if text.strip() else None

    def upload_json(self, connection: str, pipeline: str, records: Iterable[dict[str, Any]],
                    part_size: int = 10_000, *, filename: str | None = None, output: str | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
        """Upload `records` to an outbound pipeline; returns the completed upload (with its `runId`)."""
        if part_size < 1:
            raise ValueError("part_size must be at least 1")
        with tempfile.TemporaryDirectory(prefix="feedd-push-") as folder:
            parts = _cut(records, part_size, Path(folder))
            init: dict[str, Any] = {"connectionName": connection, "pipelineId": pipeline,
                                    "totalParts": max(1, len(parts))}
            if filename:
                init["filename"] = filename
            if output:
                init["output"] = output
            upload = self.request("POST", "/outbound/uploads", init)
            uid = urllib.parse.quote(upload["uploadId"])
            try:
                sent = 0
                listed = []
                for number, (path, count) in enumerate(parts or [(None, 0)], 1):
                    part = self.request("PUT", f"/outbound/uploads/{uid}/parts/{number}",
                                        raw=path.read_bytes() if path else b"[]")
                    listed.append({"partNumber": number, "etag": part["etag"]})
                    sent += count
                    if progress:
                        progress(number, max(1, len(parts)), sent)
                return self.request("POST", f"/outbound/uploads/{uid}/complete", {"parts": listed})  # type: ignore[no-any-return]
            except BaseException:
                # the upload may already be completed or gone: the first error is the one to see
                with contextlib.suppress(ClientError):
                    self.request("POST", f"/outbound/uploads/{uid}/abort")
                raise

    def run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runs/{urllib.parse.quote(run_id)}")  # type: ignore[no-any-return]

    def wait_for_run(self, run_id: str, timeout: float = 300.0, interval: float = 0.5) -> dict[str, Any]:
        """Poll until the run is delivered or failed, or completed with nothing left pending, or waits for a
        person (`needs_review`: nothing happens to it until someone decides)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            pending = any(d["status"] == "pending" for d in run["deliveries"])
            if run["status"] in (*TERMINAL, "needs_review") or (run["status"] == "completed" and not pending):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run['status']} after {timeout:.0f} s")
            time.sleep(interval)

    def runs(self, **query: Any) -> dict[str, Any]:
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return self.request("GET", "/runs" + (f"?{params}" if params else ""))  # type: ignore[no-any-return]

    def ack(self, run_id: str) -> dict[str, Any]:
        return self.request("POST", f"/runs/{urllib.parse.quote(run_id)}/ack")  # type: ignore[no-any-return]

    def retry(self, run_id: str, *, reprocess: bool = False) -> dict[str, Any]:
        body = {"reprocess": True} if reprocess else None
        return self.request("POST", f"/runs/{urllib.parse.quote(run_id)}/retry", body)  # type: ignore[no-any-return]


def _tls_context(cafile: str | None) -> ssl.SSLContext:
    """The system's CAs (or $SSL_CERT_FILE, which OpenSSL reads), plus `cafile` for a private CA.
    (create_default_context(cafile=...) would trust that file alone.)"""
    context = ssl.create_default_context()
    if cafile is not None:
        context.load_verify_locations(cafile=cafile)
    return context


def _cut(records: Iterable[dict[str, Any]], part_size: int, folder: Path) -> list[tuple[Path, int]]:
    """Write the records as JSON arrays of `part_size` into `folder`: [(path, count)]."""
    parts: list[tuple[Path, int]] = []
    out: IO[str] | None = None
    count = 0
    try:
        for record in records:
            if not isinstance(record, dict):
                raise ValueError(f"record {sum(c for _, c in parts) + count + 1} is not an object")
            if out is None:
                path = folder / f"{len(parts) + 1}.json"
                out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed when full, or below
                out.write("[")
                count = 0
            out.write(("," if count else "") + json.dumps(record, ensure_ascii=False, default=str))
            count += 1
            if count == part_size:
                out.write("]")
                out.close()
                parts.append((path, count))
                out = None
        if out is not None:
            out.write("]")
            out.close()
            parts.append((path, count))
            out = None
    finally:
        if out is not None:
            out.close()
    return parts


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Objects from a JSONL file or a JSON array file, streamed, with the reader the pipeline uses."""
    from feedd.pipeline.read import ReadError, bad_row, json_objects

    with open(path, encoding="utf-8") as f:
        kind = "json" if f.read(4096).lstrip().startswith("[") else "jsonl"
        f.seek(0)
        try:
            for number, value in json_objects(f, kind):
                if (problem := bad_row([value])) is not None:
                    raise ValueError(f"{path}: {problem}")
                if not isinstance(value, dict):
                    raise ValueError(f"{path}: record {number} is not an object")
                yield value
        except ReadError as exc:
            raise ValueError(f"{path}: {exc.message}") from None
