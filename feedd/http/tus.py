"""Resumable uploads with tus 1.0.0 at `/tus/` (README, "Side API (HTTP)"): core, creation, creation-with-upload,
termination, expiration and checksum (sha256, sha1, md5).

Bytes go to `<state_dir>/tus/<id>` and the offset to the store, in that order and both durable, so a
restart resumes at the stored offset (bytes past it, from a write cut short, are dropped at the next
PATCH). One PATCH per upload at a time, whichever node it reaches: a PATCH holds the upload in the store
(a second gets 423) and writes the offset only if it is still the one it started from. A finished upload
is taken by `intake.accept` like an SFTP drop (source kind `tus`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from feedd import events, failpoints, intake, log
from feedd.http.api import ApiError, Routes, authenticate, require_connection, require_space
from feedd.http.limits import body_chunks
from feedd.http.names import REPORT_SUFFIXES, check_space_name
from feedd.model import Direction, SourceKind, Upload, UploadState, new_id, utcnow
from feedd.pipeline.process import Job, output_name
from feedd.store import Store

VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUMS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "md5": hashlib.md5}
READ_DEADLINE = 300.0
MAX_DIGITS = 20  # an Upload-Length or Upload-Offset longer than this is no size a disk holds
_ID = re.compile(r"[0-9a-f]{32}")
OCTETS = "application/offset+octet-stream"
OPEN = (UploadState.INITIATED, UploadState.UPLOADING)
RUN_ID = "Feedd-Run-Id"  # the run a completed upload became: on the request that completed it, and on HEAD
# How long a hold lasts unless renewed: a PATCH renews it every third of that while it runs, so the hold of a
# node that died lapses within this, and the client's next PATCH (through any node) goes on.
HOLD_SECONDS = 60.0
# Holders are named `<node>/<random>`: when a node dies (killed mid-PATCH, say), the node that takes over its
# work, or the daemon's next start on a store of its own, lets go of its holds, so that the client resumes at
# once instead of after HOLD_SECONDS. Without a node id (an app built without the daemon), the host's name.
NODE = socket.gethostname()


@dataclass(slots=True)
class _Hold:
    """A PATCH's hold on its upload: `upload` is the upload as this PATCH last wrote it."""

    holder: str
    upload: Upload


def _decimal(text: str) -> int | None:
    """A byte count from a header: ASCII digits only (str.isdigit() and int() also take other scripts'
    digits, and int() refuses more than 4,300 digits), short enough for any real size."""
    if not 0 < len(text) <= MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _http_date(ts: datetime) -> str:
    return ts.strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse_metadata(header: str) -> dict[str, str]:
    """`key base64,key2 base64` -> {key: value}; 400 on anything malformed."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value.strip() else ""
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(400, "invalid_metadata", f"Upload-Metadata: {key!r} is not base64 of UTF-8 text") from None
    return out


class Tus(Routes):
    """The `/tus/` routes."""

    def __init__(self, live: Any, store: Store, accepted: Callable[[], None], node: str = "") -> None:
        super().__init__(live, store)
        self._accepted = accepted
        # The node's id starts every hold it takes: the node that takes over a dead one releases its holds.
        self._node = node or NODE


    def folder(self) -> Path:
        return self.config.state_dir / "tus"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("OPTIONS", "/tus/", self.options)
        app.router.add_post("/tus/", self.create)
        app.router.add_route("OPTIONS", "/tus/{id}", self.options)
        app.router.add_head("/tus/{id}", self.head)
        app.router.add_patch("/tus/{id}", self.patch)
        app.router.add_delete("/tus/{id}", self.delete)

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"Tus-Resumable": VERSION, **extra}

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=self._headers(
            **{"Tus-Version": VERSION, "Tus-Extension": EXTENSIONS,
               "Tus-Max-Size": str(self.config.http.tus.max_size),
               "Tus-Checksum-Algorithm": ",".join(CHECKSUMS)}))

    def _check_version(self, request: web.Request) -> None:
        if request.headers.get("Tus-Resumable") != VERSION:
            raise ApiError(412, "unsupported_version", f"Tus-Resumable must be {VERSION}",
                           {"Tus-Version": VERSION, "Tus-Resumable": VERSION})

    async def create(self, request: web.Request) -> web.Response:
        self._check_version(request)
        key = authenticate(request, self.config)
        length = _decimal(request.headers.get("Upload-Length", ""))
        if length is None:
            raise ApiError(400, "invalid_length", "Upload-Length is required: the size in bytes, up to "
                                                  f"{MAX_DIGITS} ASCII digits (deferred lengths are not supported)",
                           self._headers())
        require_space(self.config)
        limit = self.config.http.tus.max_size
        if length > limit:
            raise ApiError(413, "too_large", f"Upload-Length {length} is over the limit of {limit} bytes")
        meta = parse_metadata(request.headers.get("Upload-Metadata", ""))
        missing = [k for k in ("connection", "pipeline", "filename") if not meta.get(k)]
        if missing:
            raise ApiError(400, "invalid_metadata", f"Upload-Metadata must carry {', '.join(missing)}")
        connection, pipeline_name, filename = meta["connection"], meta["pipeline"], meta["filename"]
        # the name of the partner's reports (and, through the output template, of outputs) in the outbox
        check_space_name(filename, "Upload-Metadata filename", "invalid_metadata", REPORT_SUFFIXES)
        require_connection(key, connection)
        config = self.config
        if connection not in config.connections:
            raise ApiError(404, "not_found", f"no connection {connection!r}")
        pipeline = config.pipelines.get(pipeline_name)
        if pipeline is None or pipeline.connection != connection or pipeline.direction is not Direction.INBOUND:
            raise ApiError(422, "pipeline_mismatch", f"pipeline {pipeline_name!r} is not an inbound pipeline of "
                                                     f"connection {connection!r}")
        # and the output's name, which the pipeline's template (`{stem}`, `{name}`) makes from it
        check_space_name(output_name(pipeline, Job(new_id(), "", filename, pipeline, config.schemas[pipeline.schema],
                                                    "")), "Upload-Metadata filename (in the output name)",
                         "invalid_metadata")
        upload_id = secrets.token_hex(16)
        now = utcnow()
        expires = now + timedelta(seconds=config.http.tus.expire_after)
        upload = Upload(upload_id, SourceKind.TUS, UploadState.INITIATED, connection, pipeline_name,
                        length=length, filename=filename, created_at=now, updated_at=now, expires_at=expires)
        await asyncio.to_thread(self.folder().mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_create, self.folder() / upload_id)
        await self._store.save_upload(upload)
        log.get(connection=connection, pipeline=pipeline_name).info("tus.created", upload_id=upload_id,
                                                                    length=length, filename=filename)
        headers = self._headers(Location=f"{request.url.origin()}/tus/{upload_id}",
                                **{"Upload-Expires": _http_date(expires)})
        if request.headers.get("Content-Type") == OCTETS and (request.content_length or request.body_exists):
            upload = await self._write(request, upload)  # creation-with-upload
            headers["Upload-Offset"] = str(upload.offset)
            if upload.run_id is not None:
                headers[RUN_ID] = upload.run_id
        return web.Response(status=201, headers=headers)

    async def _owned(self, request: web.Request) -> Upload:
        self._check_version(request)
        key = authenticate(request, self.config)
        upload_id = request.match_info["id"]
        upload = await self._store.get_upload(upload_id) if _ID.fullmatch(upload_id) else None
        if upload is None or upload.kind is not SourceKind.TUS:
            raise ApiError(404, "not_found", "no such upload", self._headers())
        require_connection(key, upload.connection)
        if upload.state is UploadState.ABORTED or (upload.state in OPEN and upload.expires_at is not None
                                                   and upload.expires_at < utcnow()):
            raise ApiError(410, "gone", "this upload expired or was terminated", self._headers())
        return upload

    async def head(self, request: web.Request) -> web.Response:
        upload = await self._owned(request)
        headers = self._headers(**{"Upload-Offset": str(upload.offset), "Cache-Control": "no-store"})
        if upload.length is not None:
            headers["Upload-Length"] = str(upload.length)
        if upload.expires_at is not None and upload.state in OPEN:
            headers["Upload-Expires"] = _http_date(upload.expires_at)
        if upload.run_id is not None:
            headers[RUN_ID] = upload.run_id
        return web.Response(status=200, headers=headers)

    async def patch(self, request: web.Request) -> web.Response:
        upload = await self._owned(request)
        if request.headers.get("Content-Type") != OCTETS:
            raise ApiError(415, "unsupported_media_type", f"Content-Type must be {OCTETS}", self._headers())
        offset = _decimal(request.headers.get("Upload-Offset", ""))
        if offset is None:
            raise ApiError(400, "invalid_offset", f"Upload-Offset is required: up to {MAX_DIGITS} ASCII digits",
                           self._headers())
        require_space(self.config)
        if offset != upload.offset:
            raise ApiError(409, "offset_mismatch", f"the upload is at offset {upload.offset}, not {offset}",
                           self._headers(**{"Upload-Offset": str(upload.offset)}))
        if upload.state not in OPEN:
            raise ApiError(409, "completed", "this upload is complete", self._headers())
        upload = await self._write(request, upload)
        headers = self._headers(**{"Upload-Offset": str(upload.offset)})
        if upload.expires_at is not None and upload.state in OPEN:
            headers["Upload-Expires"] = _http_date(upload.expires_at)
        if upload.run_id is not None:
            headers[RUN_ID] = upload.run_id
        return web.Response(status=204, headers=headers)

    async def start(self) -> None:
        if released := await self._store.release_uploads(f"{self._node}/"):
            log.get().info("tus.released", uploads=released, reason="held by this node before it started")

    async def _hold(self, upload_id: str, what: str) -> _Hold:
        holder = f"{self._node}/{secrets.token_hex(8)}"
        held = await self._store.claim_upload(upload_id, holder, HOLD_SECONDS)
        if held is None:
            raise ApiError(423, "locked", f"{what} of this upload is in progress", self._headers())
        return _Hold(holder, held)

    async def _let_go(self, hold: _Hold) -> None:
        if hold.upload.holder == hold.holder:  # its last write did not let go
            await self._store.save_upload(replace(hold.upload, holder=None), expect=hold.upload)

    async def _keep(self, hold: _Hold) -> None:
        """Renew the hold while the PATCH runs (a body may take minutes); a hold lost meanwhile (the store out
        of reach for HOLD_SECONDS) is found by the offset's write, which then writes nothing."""
        while True:
            await asyncio.sleep(HOLD_SECONDS / 3)
            if await self._store.claim_upload(hold.upload.upload_id, hold.holder, HOLD_SECONDS) is None:
                return

    async def _write(self, request: web.Request, upload: Upload) -> Upload:
        hold = await self._hold(upload.upload_id, "another PATCH")
        keeper: asyncio.Task[None] | None = None
        try:
            current = hold.upload
            if current.state not in OPEN:
                raise ApiError(409, "completed", "this upload is complete", self._headers())
            if current.offset != upload.offset:
                raise ApiError(409, "offset_mismatch", f"the upload is at offset {current.offset}",
                               self._headers(**{"Upload-Offset": str(current.offset)}))
            keeper = asyncio.get_running_loop().create_task(self._keep(hold))
            return await self._receive(request, hold)
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            await self._let_go(hold)

    async def _save(self, hold: _Hold, upload: Upload) -> None:
        """Write the upload if the store still has it as this PATCH last wrote it (offset, holder)."""
        if not await self._store.save_upload(upload, expect=hold.upload):
            current = await self._store.get_upload(upload.upload_id)
            offset = str(current.offset if current is not None else hold.upload.offset)
            raise ApiError(409, "offset_mismatch", "the upload changed while this PATCH ran (its hold lapsed)",
                           self._headers(**{"Upload-Offset": offset}))
        hold.upload = upload

    async def _receive(self, request: web.Request, hold: _Hold) -> Upload:
        upload = hold.upload
        checksum = request.headers.get("Upload-Checksum")
        digest, expected = None, b""
        if checksum:
            algorithm, _, value = checksum.partition(" ")
            if algorithm not in CHECKSUMS:
                raise ApiError(400, "invalid_checksum", f"unsupported checksum algorithm {algorithm!r}; "
                                                        f"supported: {', '.join(CHECKSUMS)}", self._headers())
            try:
                expected = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ApiError(400, "invalid_checksum", "Upload-Checksum: the value is not base64",
                               self._headers()) from None
            digest = CHECKSUMS[algorithm]()
        assert upload.length is not None
        room = upload.length - upload.offset
        path = self.folder() / upload.upload_id
        fd = await asyncio.to_thread(_open_at, path, upload.offset)  # drops bytes past the stored offset
        written = 0
        try:
            try:
                async for chunk in body_chunks(request, READ_DEADLINE):  # 408 when slow or late
                    if written + len(chunk) > room:
                        raise ApiError(413, "too_large", f"the body goes past Upload-Length {upload.length}",
                                       self._headers())
                    if digest is not None:
                        digest.update(chunk)
                    await asyncio.to_thread(_write_all, fd, chunk)
                    written += len(chunk)
                    failpoints.hit("tus.mid_patch")
            except ApiError as exc:
                exc.headers = {**self._headers(), **exc.headers}  # tus answers carry Tus-Resumable
                raise
            if digest is not None and digest.digest() != expected:
                raise ApiError(460, "checksum_mismatch", "Upload-Checksum does not match this chunk: discarded",
                               self._headers())
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            # Nothing of a refused or broken chunk counts; bytes that did arrive before a disconnect are
            # kept only up to what the store says (the client resumes from HEAD).
            if digest is not None or written == 0:
                await asyncio.to_thread(os.ftruncate, fd, upload.offset)
            else:
                await asyncio.to_thread(os.fsync, fd)
                with contextlib.suppress(ApiError):  # the hold lapsed: the store's offset stands
                    await self._save(hold, replace(upload, offset=upload.offset + written,
                                                   state=UploadState.UPLOADING, updated_at=utcnow(), holder=None))
            raise
        finally:
            await asyncio.to_thread(os.close, fd)
        now = utcnow()  # activity pushes the expiry back
        done = upload.offset + written == upload.length  # held on until its run is recorded
        upload = replace(upload, offset=upload.offset + written, state=UploadState.UPLOADING, updated_at=now,
                         expires_at=now + timedelta(seconds=self.config.http.tus.expire_after),
                         holder=hold.holder if done else None)
        await self._save(hold, upload)
        if done:
            upload = await self._finish(hold)
        return upload

    async def _finish(self, hold: _Hold) -> Upload:
        upload = hold.upload
        path = self.folder() / upload.upload_id
        item = intake.Input(upload.connection, SourceKind.TUS, upload.filename or upload.upload_id, path,
                            upload.pipeline, meta={"upload_id": upload.upload_id})
        run = await intake.accept(self._store, self.config, item, pipeline=upload.pipeline)
        done = replace(upload, state=UploadState.COMPLETED, run_id=run.run_id, updated_at=utcnow(), holder=None)
        await self._save(hold, done)
        await self._store.add_events(events.make(self.config, "upload.completed", {
            "uploadId": done.upload_id, "kind": "tus", "connectionName": done.connection,
            "pipelineId": done.pipeline, "filename": done.filename, "length": done.length, "runId": run.run_id}))
        self._accepted()
        log.get(connection=upload.connection, pipeline=upload.pipeline, run_id=run.run_id).info(
            "tus.completed", upload_id=upload.upload_id, length=upload.length)
        return done

    async def delete(self, request: web.Request) -> web.Response:
        upload = await self._owned(request)
        if upload.state not in OPEN:
            raise ApiError(409, "completed", "a completed upload cannot be terminated", self._headers())
        hold = await self._hold(upload.upload_id, "a PATCH")
        try:
            if hold.upload.state not in OPEN:
                raise ApiError(409, "completed", "a completed upload cannot be terminated", self._headers())
            await self._terminate(hold, "terminated by the client")
        finally:
            await self._let_go(hold)
        return web.Response(status=204, headers=self._headers())

    async def _terminate(self, hold: _Hold, why: str) -> None:
        upload = hold.upload
        await self._save(hold, replace(upload, state=UploadState.ABORTED, updated_at=utcnow(), holder=None))
        await asyncio.to_thread((self.folder() / upload.upload_id).unlink, missing_ok=True)
        await self._store.add_events(events.make(self.config, "upload.aborted", {
            "uploadId": upload.upload_id, "kind": "tus", "connectionName": upload.connection,
            "pipelineId": upload.pipeline, "reason": why}))
        log.get(connection=upload.connection, pipeline=upload.pipeline).info("tus.aborted", upload_id=upload.upload_id,
                                                                             reason=why)

    async def sweep(self) -> int:
        """Expired uploads: files deleted, state aborted (HEAD/PATCH then answer 410)."""
        stale = await self._store.stale_uploads(OPEN, utcnow() - timedelta(seconds=self.config.http.tus.expire_after))
        swept = 0
        for upload in stale:
            if upload.kind is SourceKind.TUS and upload.expires_at is not None and upload.expires_at < utcnow():
                try:
                    hold = await self._hold(upload.upload_id, "a PATCH")
                except ApiError:
                    continue  # in use: not expired after all
                try:
                    current = hold.upload
                    if current.state in OPEN and current.expires_at is not None and current.expires_at < utcnow():
                        with contextlib.suppress(ApiError):  # changed since it was held: not expired after all
                            await self._terminate(hold, "expired")
                            swept += 1
                finally:
                    await self._let_go(hold)
        return swept


def _create(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked
        view = view[os.write(fd, view):]


def _open_at(path: Path, offset: int) -> int:
    fd = os.open(path, os.O_WRONLY)
    os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return fd
