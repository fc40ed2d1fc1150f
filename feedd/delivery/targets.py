"""Remote destinations: `webhook` (records POSTed in signed batches), `s3`, and `sftp` (another server).

Each `send_*` delivers one run's output once, or raises: `RetryableDeliveryError` for what may work
later (timeouts, refused connections, 5xx, 429), `PermanentDeliveryError` for what will not (410 Gone, a
4xx, a redirect (never followed), a wrong host key). Every delivery carries the idempotency key
`<run id>:<destination>`, and its target name or batch ids are the same on every try, so a receiver that
can tell sees one copy.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from feedd import failpoints
from feedd.config.values import Destination
from feedd.errors import FeeddError, RetryableDeliveryError
from feedd.events import redirect_error, retry_after, signed_headers

S3_PART = 16 * 1024 * 1024  # multipart above this size, in parts of this size
_TYPES = {"ndjson": "application/x-ndjson", "json": "application/json"}


class PermanentDeliveryError(FeeddError):
    """A delivery that will not work by trying again (410 Gone, 4xx, a host key that does not match)."""

    code = "delivery_refused"


class GoneError(PermanentDeliveryError):
    """The receiver answered 410 Gone: it says it wants nothing more, so it gets nothing more."""

    code = "gone"


@dataclass(frozen=True, slots=True)
class Shipment:
    """One run's output on its way to one destination."""

    run_id: str
    destination: Destination
    records: Path  # the output file as the pipeline wrote it (format per `output`)
    records_jsonl: Path  # the same records as NDJSON (what webhooks receive)
    filename: str  # the name it gets where it lands, fixed when the run completed

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.destination.key}"


def _next_batch(f: IO[bytes], size: int) -> list[bytes]:
    out = []
    for line in f:
        out.append(line)
        if len(out) >= size:
            break
    return out


async def send_webhook(session: aiohttp.ClientSession, s: Shipment) -> None:
    """POST the records as NDJSON in batches; each batch has its own stable `webhook-id`."""
    dest = s.destination
    assert dest.url is not None
    f = await asyncio.to_thread(open, s.records_jsonl, "rb")
    try:
        number = 0
        while batch := await asyncio.to_thread(_next_batch, f, dest.batch_size):
            number += 1
            body = b"".join(batch) if dest.body == "ndjson" else b"[" + b",".join(x.rstrip(b"\n") for x in batch) + b"]"
            headers = signed_headers(dest.secret, f"{s.run_id}.{dest.key}.{number}", body)
            headers.update({"Content-Type": _TYPES[dest.body], "Idempotency-Key": f"{s.key}:{number}",
                            "feedd-run-id": s.run_id, "feedd-batch": str(number)})
            await _post(session, dest.url, body, headers, dest.timeout)
            failpoints.hit("delivery.mid")
        if number == 0:  # no records: still tell the receiver the run finished, with an empty batch
            empty = b"" if dest.body == "ndjson" else b"[]"
            headers = {**signed_headers(dest.secret, f"{s.run_id}.{dest.key}.0", empty),
                       "Content-Type": _TYPES[dest.body], "Idempotency-Key": s.key, "feedd-run-id": s.run_id,
                       "feedd-batch": "0"}
            await _post(session, dest.url, empty, headers, dest.timeout)
    finally:
        f.close()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                timeout: float) -> None:  # noqa: ASYNC109 - a per-request aiohttp timeout, not a wait
    try:
        # Never followed: a receiver (or whoever took over its name) must not be able to send the records
        # and their signature on to an address nobody configured.
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if 200 <= resp.status < 300:
                return
            if 300 <= resp.status < 400:
                raise PermanentDeliveryError(redirect_error(url, resp.status, resp.headers.get("Location")))
            if resp.status == 410:
                raise GoneError(f"{url} answered 410 Gone: delivery to it is given up")
            if resp.status in (408, 425, 429) or resp.status >= 500:
                raise RetryableDeliveryError(f"{url} answered HTTP {resp.status}",
                                             retry_after=retry_after(resp.headers.get("Retry-After")))
            raise PermanentDeliveryError(f"{url} answered HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise RetryableDeliveryError(f"{url}: {type(exc).__name__} {exc}".strip()) from None


async def send_s3(s: Shipment) -> None:
    """Put the output at `<prefix><filename>`: one PUT, or a multipart upload for large files. The same
    key on every try: a retry overwrites, never adds a second object."""
    try:  # imported on use: only setups with S3 destinations need it (pip install 'feedd[s3]')
        from aiobotocore.session import get_session
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise PermanentDeliveryError("an s3 destination needs aiobotocore: pip install 'feedd[s3]'") from None

    dest = s.destination
    key = f"{dest.prefix}{s.filename}"
    size = (await asyncio.to_thread(os.stat, s.records)).st_size
    try:
        async with get_session().create_client("s3", endpoint_url=dest.endpoint_url,
                                               region_name=dest.region or "us-east-1") as client:
            if size <= S3_PART:
                body = await asyncio.to_thread(s.records.read_bytes)
                await client.put_object(Bucket=dest.bucket, Key=key, Body=body,
                                        Metadata={"feedd-run-id": s.run_id})
                return
            await _multipart(client, dest.bucket or "", key, s)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"s3://{dest.bucket}/{key}: {exc}"
        if status >= 500 or status in (408, 429):
            raise RetryableDeliveryError(message) from None
        raise PermanentDeliveryError(message) from None
    except (BotoCoreError, OSError, TimeoutError) as exc:
        raise RetryableDeliveryError(f"s3://{dest.bucket}/{key}: {exc}") from None


async def _multipart(client: Any, bucket: str, key: str, s: Shipment) -> None:
    started = await client.create_multipart_upload(Bucket=bucket, Key=key, Metadata={"feedd-run-id": s.run_id})
    upload_id = started["UploadId"]
    try:
        parts = []
        f = await asyncio.to_thread(open, s.records, "rb")
        try:
            number = 0
            while chunk := await asyncio.to_thread(f.read, S3_PART):
                number += 1
                done = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                Body=chunk)
                parts.append({"PartNumber": number, "ETag": done["ETag"]})
        finally:
            f.close()
        await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                               MultipartUpload={"Parts": parts})
    except BaseException:
        await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


async def send_sftp(s: Shipment) -> None:
    """Upload to `<path>/.<filename>.<run id>.tmp` on the remote server, then rename to `<filename>`:
    a reader there never sees half a file. The host key is checked against `known_hosts`."""
    import asyncssh

    dest = s.destination
    options: dict[str, Any] = {"username": dest.username, "port": dest.port,
                               "client_keys": [str(dest.key_file)] if dest.key_file else None,
                               "password": dest.password}
    if dest.known_hosts is not None:
        options["known_hosts"] = str(dest.known_hosts)  # else ~/.ssh/known_hosts, as OpenSSH does
    folder = (dest.remote_path or "/").rstrip("/")
    final, tmp = f"{folder}/{s.filename}", f"{folder}/.{s.filename}.{s.run_id}.tmp"
    where = f"sftp://{dest.username}@{dest.host}:{dest.port}{final}"
    try:
        async with asyncssh.connect(dest.host, **options) as conn, conn.start_sftp_client() as sftp:
            await sftp.put(str(s.records), tmp)
            if await sftp.exists(final):
                await sftp.remove(final)  # a retry after a crash: the same name, replaced whole
            await sftp.rename(tmp, final)
    except (asyncssh.HostKeyNotVerifiable, asyncssh.PermissionDenied) as exc:
        raise PermanentDeliveryError(f"{where}: {exc}") from None
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise RetryableDeliveryError(f"{where}: {exc}") from None
