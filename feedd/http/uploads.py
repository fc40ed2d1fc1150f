"""Outbound multipart uploads (README, "Side API (HTTP)"): init, parts, complete, abort, status, and the expiry sweep.

A part is streamed to its own file under `<state_dir>/uploads/<uploadId>/` while its sha256 (the etag) is
computed, then checked as a JSON array of objects: off the event loop, in a worker process when it is
large. Complete splices the parts' arrays into one JSON array file without parsing them again and hands it
to `intake.accept`, like every other way in.

Any node may take any call (the state_dir is shared): a part is a row of its own in the store and a file named
by its etag, so parts sent at once through two nodes are all kept. A complete first gives the upload its run
id (one writer wins; no part is recorded after), so completes at once, or again after a crash, make that one
run; every other change is written only if the upload is still as it was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from feedd import events, failpoints, intake, log, supervisor
from feedd.durable import fsync_dir
from feedd.errors import ConflictError
from feedd.http.api import ApiError, Routes, authenticate, field, json_body, require_connection, require_space
from feedd.http.limits import body_chunks
from feedd.http.names import check_space_name
from feedd.model import Direction, SourceKind, Upload, UploadState, iso, new_id, utcnow
from feedd.pipeline.parts import check_part
from feedd.pipeline.runner import die_with_parent
from feedd.store import Store

READ_DEADLINE = 300.0  # seconds to receive one part's body
IN_PROCESS_CHECK = 256 * 1024  # parts up to this size are checked in a thread; larger ones in a worker process
MAX_PARTS = 10_000
SWEEP_SECONDS = 60.0
WRITE_TRIES = 20  # reads and writes again of an upload that changed between the two, before a 409
_ID = re.compile(r"[0-9A-Z]{26}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,199}")
OUTPUTS = ("csv", "json", "jsonl")
OPEN = (UploadState.INITIATED, UploadState.UPLOADING)


def splice(parts: list[Path], out: Path) -> tuple[list[tuple[int, int]], str]:
    """Join the parts' arrays into one array at `out`: `[a, b] + [c]` -> `[a, b, c]`, bytes only. Returns
    where each part's elements landed (start, end), for the runner to process a large upload in stretches,
    and the file's sha256, computed on the way so that intake need not read it again."""
    spans: list[tuple[int, int]] = []
    digest = hashlib.sha256()
    with open(out, "wb") as dest:

        def write(data: bytes) -> None:
            dest.write(data)
            digest.update(data)

        write(b"[")
        at, first = 1, True
        for path in parts:
            inner = path.read_bytes().strip()[1:-1].strip()  # each part was checked to be an array
            if inner:
                if not first:
                    write(b",\n")
                    at += 2
                write(inner)
                spans.append((at, at + len(inner)))
                at, first = at + len(inner), False
            else:
                spans.append((at, at))
        write(b"]\n")
        dest.flush()
        os.fsync(dest.fileno())
    return spans, digest.hexdigest()


MAX_SPANS = 64  # kept with the run: enough to share out among workers, small enough to load with it


def coarse(parts: list[list[int]], most: int = MAX_SPANS) -> list[list[int]]:
    """Where the parts landed, `[start, end, records]` each, as at most `most` runs of adjacent parts."""
    if len(parts) <= most:
        return parts
    per = -(-len(parts) // most)
    return [[group[0][0], group[-1][1], sum(p[2] for p in group)]
            for group in (parts[i:i + per] for i in range(0, len(parts), per))]


def view(upload: Upload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uploadId": upload.upload_id, "state": str(upload.state), "connectionName": upload.connection,
        "pipelineId": upload.pipeline, "totalParts": upload.total_parts, "partsReceived": sorted(upload.parts),
        "records": upload.records, "createdAt": iso(upload.created_at), "updatedAt": iso(upload.updated_at),
    }
    if upload.filename:
        out["filename"] = upload.filename
    if upload.meta.get("output"):
        out["output"] = upload.meta["output"]
    if upload.run_id and upload.state is UploadState.COMPLETED:  # before, the id of a run being made
        out["runId"] = upload.run_id
    return out


class Uploads(Routes):
    """The routes and their state: where parts live, the checking pool, the sweep."""

    def __init__(self, config: Any, store: Store, accepted: Callable[[], None] = lambda: None,
                 sweepers: tuple[Callable[[], Awaitable[int]], ...] = ()) -> None:
        super().__init__(config, store)
        self._accepted = accepted
        self._sweepers = (self.sweep, *sweepers)  # tus uploads expire on the same beat
        self._pool: ProcessPoolExecutor | None = None
        self._sweeper: asyncio.Task[None] | None = None


    def folder(self, upload_id: str) -> Path:
        return self.config.state_dir / "uploads" / upload_id

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/outbound/uploads", self.init)
        app.router.add_put("/outbound/uploads/{uploadId}/parts/{partNumber}", self.put_part)
        app.router.add_post("/outbound/uploads/{uploadId}/complete", self.complete)
        app.router.add_post("/outbound/uploads/{uploadId}/abort", self.abort)
        app.router.add_get("/outbound/uploads/{uploadId}", self.status)

    async def start(self) -> None:
        self._sweeper = supervisor.supervise("uploads.sweep", self._sweep_forever)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _owned(self, request: web.Request) -> Upload:
        key = authenticate(request, self.config)
        upload_id = request.match_info["uploadId"]
        upload = await self._store.get_upload(upload_id) if _ID.fullmatch(upload_id) else None
        if upload is None or upload.kind is not SourceKind.UPLOAD:
            raise ApiError(404, "not_found", f"no upload {upload_id!r}")
        require_connection(key, upload.connection)
        return upload

    async def init(self, request: web.Request) -> web.Response:
        key = authenticate(request, self.config)
        body = await json_body(request)
        connection = field(body, "connectionName", str)
        pipeline_name = field(body, "pipelineId", str)
        total = field(body, "totalParts", int)
        filename = field(body, "filename", str, required=False)
        output = field(body, "output", str, required=False)
        if not 1 <= total <= MAX_PARTS:
            raise ApiError(400, "invalid_body", f"totalParts: expected 1 to {MAX_PARTS}, got {total}")
        if filename is not None:
            # the name of the partner's file in its outbox: what the jail accepts, and plain ASCII
            check_space_name(filename, "filename", "invalid_body")
            if not _NAME.fullmatch(filename) or ".." in filename:
                raise ApiError(400, "invalid_body", "filename: letters, digits, '.', '_', '-' and spaces, up to "
                                                    "200, not starting with a dot, without '..'")
        if output is not None and output not in OUTPUTS:
            raise ApiError(400, "invalid_body", f"output: expected one of {', '.join(OUTPUTS)}")
        require_connection(key, connection)
        config = self.config
        if connection not in config.connections:
            raise ApiError(404, "not_found", f"no connection {connection!r}")
        pipeline = config.pipelines.get(pipeline_name)
        if pipeline is None:
            raise ApiError(404, "not_found", f"no pipeline {pipeline_name!r}")
        if pipeline.connection != connection:
            raise ApiError(422, "pipeline_mismatch",
                           f"pipeline {pipeline_name!r} belongs to connection {pipeline.connection!r}, "
                           f"not {connection!r}")
        if pipeline.direction is not Direction.OUTBOUND:
            raise ApiError(422, "pipeline_not_outbound", f"pipeline {pipeline_name!r} is inbound; uploads go to "
                                                         "outbound pipelines")
        now = utcnow()
        upload = Upload(new_id(), SourceKind.UPLOAD, UploadState.INITIATED, connection, pipeline_name,
                        total_parts=total, filename=filename, meta={"output": output} if output else {},
                        created_at=now, updated_at=now,
                        expires_at=now + timedelta(seconds=config.http.upload_expire_after))
        await self._store.save_upload(upload)
        log.get(connection=connection, pipeline=pipeline_name).info("upload.initiated", upload_id=upload.upload_id,
                                                                    total_parts=total)
        return web.json_response(view(upload), status=201)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(view(await self._owned(request)))

    async def put_part(self, request: web.Request) -> web.Response:
        upload = await self._owned(request)
        _require_open(upload)  # a closed upload takes nothing, whatever the part number
        if upload.run_id is not None:
            raise ApiError(409, "wrong_state", f"upload {upload.upload_id} is being completed; it takes no more parts")
        require_space(self.config)
        text = request.match_info["partNumber"]
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
        if not 1 <= number <= upload.total_parts:
            raise ApiError(400, "invalid_part_number",
                           f"partNumber must be 1 to {upload.total_parts}, got {text[:20]!r}")
        limit = self.config.http.max_part_size
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "too_large", f"a part may be at most {limit} bytes")
        folder = self.folder(upload.upload_id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        tmp = folder / f".{number}.{secrets.token_hex(4)}.tmp"
        try:
            etag, size = await self._receive(request, tmp, limit)
            records, problem = await self._check(tmp, size)
            if problem is not None:
                raise ApiError(400, "invalid_part", f"part {number}: {problem}")
            part = _part_file(folder, number, etag)
            try:
                await asyncio.to_thread(_settle, tmp, part)
            except FileNotFoundError:  # the folder went with its upload, completed or aborted meanwhile
                current = await self._store.get_upload(upload.upload_id)
                assert current is not None
                _require_open(current)
                raise
            if not await self._store.save_part(upload.upload_id, number, etag, records):
                current = await self._store.get_upload(upload.upload_id)
                if current is None or current.parts.get(number) != etag:  # the file is no recorded part's
                    await asyncio.to_thread(part.unlink, missing_ok=True)
                assert current is not None
                _require_open(current)
                raise ApiError(409, "wrong_state", f"upload {upload.upload_id} is being completed; it takes no "
                                                   "more parts")
        finally:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
        return web.json_response({"partNumber": number, "records": records, "etag": etag})

    async def _receive(self, request: web.Request, tmp: Path, limit: int) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with open(tmp, "wb") as f:  # noqa: ASYNC230 - small buffered writes; the fsync runs in a thread
            async for chunk in body_chunks(request, READ_DEADLINE):  # 408 when slow or late
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"a part may be at most {limit} bytes")
                digest.update(chunk)
                f.write(chunk)
            await asyncio.to_thread(_sync, f)
        return digest.hexdigest(), size

    async def _check(self, path: Path, size: int) -> tuple[int, str | None]:
        if size <= IN_PROCESS_CHECK:
            return await asyncio.to_thread(check_part, str(path))
        for attempt in (1, 2):
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=die_with_parent, initargs=(os.getpid(),))
            pool = self._pool
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, check_part, str(path))
            except BrokenProcessPool:
                # The checker died (killed, out of memory): a new one takes this part, and the parts after
                # it, instead of every large part failing until a restart.
                log.get().warning("upload.checker_died", attempt=attempt)
                if self._pool is pool:
                    self._pool = None
                    pool.shutdown(wait=False, cancel_futures=True)
        raise ApiError(503, "checker_unavailable", "the part could not be checked (the checking process "
                                                   "died twice); send it again")

    async def complete(self, request: web.Request) -> web.Response:
        upload = await self._owned(request)
        body = await json_body(request)
        listed = field(body, "parts", list)
        wanted: dict[int, str | None] = {}
        for i, item in enumerate(listed):
            if not isinstance(item, dict):
                raise ApiError(400, "invalid_body", f"parts[{i}]: expected an object {{partNumber, etag?}}")
            number = field(item, "partNumber", int)
            etag = field(item, "etag", str, required=False)
            wanted[number] = etag.strip('"') if etag else None
        current: Upload | None = upload
        for _ in range(WRITE_TRIES):
            assert current is not None
            _require_open(current)
            _check_parts(current, wanted)
            if current.run_id is not None:  # a complete began (here, on another node, or before a crash)
                break
            # Given only if no part came since the parts were checked; from then on no part is recorded.
            begun = replace(current, run_id=new_id(), updated_at=utcnow())
            if await self._store.save_upload(begun, expect=current):
                current = begun
                break
            current = await self._store.get_upload(upload.upload_id)  # a part or another complete came first
        else:
            raise ApiError(409, "busy", "the upload kept changing while it was being completed; try again")
        assert current is not None
        return web.json_response(await self._finish(current))

    async def _finish(self, upload: Upload) -> dict[str, Any]:
        config = self.config
        assert upload.run_id is not None
        folder = self.folder(upload.upload_id)
        run = await self._store.get_run(upload.run_id)
        if run is None:
            # a file of this attempt's own: another node may be splicing the same upload at this moment
            assembled = folder / f"assembled.{secrets.token_hex(4)}.json"
            parts = [_part_file(folder, n, upload.parts[n]) for n in range(1, upload.total_parts + 1)]
            try:
                spans, sha256 = await asyncio.to_thread(splice, parts, assembled)
                failpoints.hit("upload.mid_complete")
                name = upload.filename or f"{upload.upload_id}.json"
                meta = {"upload_id": upload.upload_id, "filename": upload.filename, **upload.meta}
                meta.pop("records", None)  # per part, as stored before parts had rows of their own
                meta["parts"] = coarse([[start, end, upload.part_records.get(n, 0)]
                                        for n, (start, end) in enumerate(spans, 1)])
                item = intake.Input(upload.connection, SourceKind.UPLOAD, name, assembled, upload.pipeline,
                                    sha256=sha256, meta=meta, run_id=upload.run_id)
                try:
                    run = await intake.accept(self._store, config, item, pipeline=upload.pipeline)
                except ConflictError:  # another complete of it recorded the run first
                    run = await self._store.get_run(upload.run_id)
                    if run is None:
                        raise
                self._accepted()
            finally:
                await asyncio.to_thread(assembled.unlink, missing_ok=True)
        done = replace(upload, state=UploadState.COMPLETED, updated_at=utcnow())
        if upload.state is not UploadState.COMPLETED and await self._store.save_upload(done, expect=upload):
            # announced by the complete that wrote it, once
            await self._store.add_events(events.make(config, "upload.completed", {**view(done), "runId": run.run_id}))
            log.get(connection=upload.connection, pipeline=upload.pipeline, run_id=run.run_id).info(
                "upload.completed", upload_id=upload.upload_id, parts=upload.total_parts, records=upload.records)
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return {"uploadId": done.upload_id, "state": str(done.state), "runId": run.run_id, "records": done.records}

    async def abort(self, request: web.Request) -> web.Response:
        current: Upload | None = await self._owned(request)
        for _ in range(WRITE_TRIES):
            assert current is not None
            _require_open(current)
            if current.run_id is not None:
                raise ApiError(409, "wrong_state", f"upload {current.upload_id} is being completed")
            if await self._abort(current, "aborted by the client"):
                break
            current = await self._store.get_upload(current.upload_id)  # a part came meanwhile
        else:
            raise ApiError(409, "busy", "the upload kept changing while it was being aborted; try again")
        return web.json_response({"uploadId": current.upload_id, "state": str(UploadState.ABORTED)})

    async def _abort(self, upload: Upload, why: str) -> bool:
        aborted = replace(upload, state=UploadState.ABORTED, updated_at=utcnow())
        if not await self._store.save_upload(aborted, expect=upload):
            return False
        await self._store.add_events(events.make(self.config, "upload.aborted", {**view(aborted), "reason": why}))
        self._accepted()
        await asyncio.to_thread(shutil.rmtree, self.folder(upload.upload_id), True)
        log.get(connection=upload.connection, pipeline=upload.pipeline).info(
            "upload.aborted", upload_id=upload.upload_id, reason=why)
        return True

    async def sweep(self) -> int:
        """Abort uploads not touched for `http.upload_expire_after`; their parts are deleted."""
        before = utcnow() - timedelta(seconds=self.config.http.upload_expire_after)
        stale = await self._store.stale_uploads(OPEN, before)
        swept = 0
        for upload in stale:
            if upload.kind is not SourceKind.UPLOAD:
                continue
            if upload.run_id is not None and await self._store.get_run(upload.run_id) is not None:
                await self._finish(upload)  # its complete recorded the run, then its node died
            elif await self._abort(upload, "expired"):  # unless it changed (a part came) since it was read
                swept += 1
        return swept

    async def _sweep_forever(self) -> None:
        while True:
            for sweep in self._sweepers:
                try:
                    await sweep()
                except Exception:
                    log.get().exception("upload.sweep_failed")
            http = self.config.http
            shortest = min(http.upload_expire_after, http.tus.expire_after)
            await asyncio.sleep(min(SWEEP_SECONDS, max(1.0, shortest / 10)))


def _require_open(upload: Upload) -> None:
    if upload.state not in OPEN:
        raise ApiError(409, "wrong_state", f"upload {upload.upload_id} is {upload.state}; parts, complete and "
                                           "abort need an initiated or uploading upload")


def _check_parts(upload: Upload, wanted: dict[int, str | None]) -> None:
    expected = range(1, upload.total_parts + 1)
    if unknown := sorted(n for n in wanted if n not in expected):
        raise ApiError(422, "invalid_parts", f"part {unknown[0]} is outside 1..{upload.total_parts}")
    if missing := [n for n in expected if n not in upload.parts]:
        raise ApiError(422, "missing_parts", f"part(s) {', '.join(map(str, missing[:20]))} never uploaded")
    if unlisted := [n for n in expected if n not in wanted]:
        raise ApiError(422, "missing_parts", f"part(s) {', '.join(map(str, unlisted[:20]))} not listed in 'parts'")
    for number, etag in sorted(wanted.items()):
        if etag is not None and etag != upload.parts[number]:
            raise ApiError(422, "etag_mismatch", f"part {number}: etag {etag!r} differs from the stored part's "
                                                 f"{upload.parts[number]!r}")


def _part_file(folder: Path, number: int, etag: str) -> Path:
    """Named by its etag: a part sent again, through another node, never overwrites the file of the one
    recorded. (`<n>.json`: a part stored before parts had rows of their own.)"""
    named = folder / f"{number}.{etag}.json"
    return named if named.exists() or not (folder / f"{number}.json").exists() else folder / f"{number}.json"


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _settle(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)
