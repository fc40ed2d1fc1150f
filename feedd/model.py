"""The values that cross layers: runs, their sources and deliveries, uploads. Standard library only."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    DELIVERED = "delivered"
    FAILED = "failed"
    HELD = "held"
    NEEDS_REVIEW = "needs_review"  # resting: waits for a person's decision (README, "Review")

    @property
    def finished(self) -> bool:
        """No more work will happen on its own (a `completed` run may still have pending deliveries)."""
        return self in (RunStatus.DELIVERED, RunStatus.FAILED)


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class SourceKind(StrEnum):
    SFTP = "sftp"
    UPLOAD = "upload"
    TUS = "tus"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class UploadState(StrEnum):
    INITIATED = "initiated"
    UPLOADING = "uploading"
    COMPLETED = "completed"
    ABORTED = "aborted"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_id: tuple[int, int] = (0, 0)


def new_id() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, 26 characters.

    Ids sort by creation time (lexically and numerically); ids made in the same millisecond by
    this process increase by one so that order holds within the millisecond too.
    """
    global _last_id
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_rand = _last_id
        if ms <= last_ms:
            ms, rand = last_ms, (last_rand + 1) & ((1 << 80) - 1)
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_id = (ms, rand)
    value = (ms << 80) | rand
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def id_floor(at: datetime) -> str:
    """The smallest id made at `at`: runs created at or after `at` have ids >= this one."""
    value = max(0, int(at.timestamp() * 1000)) << 80
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@dataclass(frozen=True, slots=True)
class Source:
    kind: SourceKind
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Counts:
    rows: int = 0
    valid: int = 0
    invalid: int = 0


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RunError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Delivery:
    run_id: str
    destination: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One event for one subscriber, queued durably until its webhook answers 2xx (or attempts run out).
    `event_id` is the `webhook-id`: the same on every retry, and for every subscriber of the event."""

    event_id: str
    url: str
    type: str
    body: str  # the JSON document POSTed, fixed when the event happened
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    pipeline: str | None
    connection: str
    direction: Direction
    status: RunStatus
    source: Source
    spool_path: str
    counts: Counts = Counts()
    mapping: dict[str, str] = field(default_factory=dict)
    errors: tuple[RowError, ...] = ()
    error: RunError | None = None
    deliveries: tuple[Delivery, ...] = ()
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    acknowledged_at: datetime | None = None
    duplicate_of: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The run as the API shows it (camelCase; README, "Side API (HTTP)")."""
        return {
            "runId": self.run_id,
            "pipeline": self.pipeline,
            "connection": self.connection,
            "direction": str(self.direction),
            "status": str(self.status),
            "source": {
                "kind": str(self.source.kind),
                "name": self.source.name,
                "size": self.source.size,
                "sha256": self.source.sha256,
                "receivedAt": iso(self.created_at),
            },
            "counts": {"rows": self.counts.rows, "valid": self.counts.valid, "invalid": self.counts.invalid,
                       "warned": int(self.meta.get("warned") or 0)},
            "mapping": dict(self.mapping),
            # how each field's column was chosen (and why a configured column was not used)
            "mappingReasons": dict(self.meta.get("mapping_reasons") or {}),
            "errors": [
                {"row": e.row, "field": e.field, "code": e.code, "message": e.message} for e in self.errors
            ],
            # row warnings (rules with `severity: warning`): the rows stay valid; kept in meta, like the reasons
            "warnings": [
                {"row": w[0], "field": w[1], "code": w[2], "message": w[3]} for w in self.meta.get("warnings") or ()
            ],
            "error": None if self.error is None else {"code": self.error.code, "message": self.error.message},
            "deliveries": [
                {
                    "destination": d.destination,
                    "status": str(d.status),
                    "attempts": d.attempts,
                    "lastError": d.last_error,
                    "deliveredAt": iso(d.delivered_at),
                }
                for d in self.deliveries
            ],
            "duplicateOf": self.duplicate_of,
            # why the run was sent to a person, and what they decided (null for a run never reviewed)
            "review": self.meta.get("review") or None,
            "createdAt": iso(self.created_at),
            "startedAt": iso(self.started_at),
            "finishedAt": iso(self.finished_at),
            "acknowledgedAt": iso(self.acknowledged_at),
            # what retention deleted of the run (README, "Retention")
            "swept": {"input": self.swept("input"), "outputs": self.swept("outputs")},
        }

    def swept(self, part: str) -> bool:
        """Whether retention deleted the run's `input` or `outputs`."""
        marks = self.meta.get("swept")
        return isinstance(marks, dict) and bool(marks.get(part))


@dataclass(frozen=True, slots=True)
class Missed:
    """A window reported missed (persisted, so that a restart neither forgets nor repeats it)."""

    expected_by: datetime
    opens: datetime
    deadline: datetime
    last_arrival_at: datetime | None
    reported_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "expectedBy": iso(self.expected_by),
            "opens": iso(self.opens),
            "deadline": iso(self.deadline),
            "lastArrivalAt": iso(self.last_arrival_at),
            "reportedAt": iso(self.reported_at),
        }


@dataclass(frozen=True, slots=True)
class ArrivalState:
    """What the schedule has judged of one pipeline: watched `since` (windows due before are not judged),
    every window due up to `checked_until` judged, the last missed ones (newest first), and against which
    expectation (a changed one is watched afresh)."""

    since: datetime
    checked_until: datetime | None
    missed: tuple[Missed, ...] = ()
    expect: str = ""  # the expectation judged (`Expect.key`); "" while the pipeline expects nothing


@dataclass(frozen=True, slots=True)
class Received:
    """The runs of a pipeline received in a stretch of time, grouped: `count` runs in `status`, `enough`
    telling whether they have the valid rows asked for (or none at all), the newest received at `last_at`."""

    status: str
    enough: bool
    count: int
    last_at: datetime


@dataclass(frozen=True, slots=True)
class Upload:
    """An outbound multipart session or a tus upload, as stored."""

    upload_id: str
    kind: SourceKind
    state: UploadState
    connection: str
    pipeline: str
    total_parts: int = 0
    parts: dict[int, str] = field(default_factory=dict)  # part number -> etag
    records: int = 0
    offset: int = 0
    length: int | None = None
    filename: str | None = None
    run_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    expires_at: datetime | None = None
    part_records: dict[int, int] = field(default_factory=dict)  # part number -> records in it
    holder: str | None = None  # who holds it (a tus PATCH in progress), until that one lets go or its time is up


class ObjectKind(StrEnum):
    """What can be managed over the API; the config file's section of each is its plural."""

    SCHEMA = "schema"
    CONNECTION = "connection"
    PIPELINE = "pipeline"

    @property
    def section(self) -> str:
        return f"{self.value}s"


@dataclass(frozen=True, slots=True)
class ManagedObject:
    """A schema, connection or pipeline created over the API: its body in the config file's own shape
    (secrets hashed, never plain), and its version, raised by one at each change."""

    kind: ObjectKind
    name: str
    body: dict[str, Any]
    version: int = 1
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


class AuditAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    RELOAD = "reload"
    APPROVE = "approve"  # a run in `needs_review` approved (kind "run")
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change of the config in force, or a reviewer's decision on a run: who, what, and the object
    before and after (never a secret)."""

    actor: str
    action: AuditAction
    kind: str  # an ObjectKind, "config" for a reload of the file, or "run" for a review decision
    name: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    at: datetime = field(default_factory=utcnow)

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "actor": self.actor, "action": str(self.action), "kind": self.kind,
                "name": self.name, "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class Node:
    """A feedd process sharing the store: its id (host, pid and a random part: never reused), when it
    started, its last heartbeat, what it tells about itself (host, pid, addresses), and the work it holds
    now: the runs it is processing, and how many deliveries and events it is sending."""

    node_id: str
    started_at: datetime
    heartbeat_at: datetime
    info: dict[str, Any] = field(default_factory=dict)
    runs: tuple[str, ...] = ()
    deliveries: int = 0
    events: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node_id, "startedAt": iso(self.started_at), "heartbeatAt": iso(self.heartbeat_at),
                **self.info, "holds": {"runs": list(self.runs), "deliveries": self.deliveries,
                                       "events": self.events}}


@dataclass(frozen=True, slots=True)
class TakenOver:
    """A node found dead, and the work of it that went back to the others."""

    node_id: str
    runs: tuple[str, ...] = ()
    deliveries: int = 0
    events: int = 0
