"""The `Store` seam: the few durable operations feedd needs, whatever keeps them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from feedd.model import (
    ArrivalState,
    AuditEntry,
    Delivery,
    DeliveryStatus,
    Event,
    ManagedObject,
    Missed,
    Node,
    ObjectKind,
    Received,
    Run,
    RunStatus,
    TakenOver,
    Upload,
    UploadState,
)


@dataclass(frozen=True, slots=True)
class RunQuery:
    """A filter over runs. `connections` limits to those names (None: all); `cursor` is a run id."""

    connection: str | None = None
    pipeline: str | None = None
    statuses: tuple[RunStatus, ...] = ()
    acknowledged: bool | None = None
    connections: frozenset[str] | None = None
    limit: int = 100
    cursor: str | None = None
    oldest_first: bool = False
    delivery_failed: bool | None = None  # True: only runs with a delivery failed for good; False: none
    since_id: str | None = None  # only runs with an id >= this (ids sort by creation time: see model.id_floor)
    until_id: str | None = None  # only runs with an id < this
    name: str | None = None  # only runs whose source name contains this (case-insensitive)


@dataclass(frozen=True, slots=True)
class Remembered:
    """The mapping a connection's file with this header set was read with, kept for its next file."""

    connection: str
    header_key: str
    mapping: dict[str, str]


@dataclass(frozen=True, slots=True)
class OperatorSession:
    """A console login as the store keeps it, shared by every node: found by the SHA-256 of its token
    (never the token itself). `password_tag` tells which password it was opened with (see
    feedd.console.sessions), so that a changed password ends it."""

    token_hash: str
    operator: str
    role: str
    password_tag: str
    created_at: datetime
    expires_at: datetime


class SweptPart(StrEnum):
    """What of a run retention deletes: its spooled input, or its outputs (records, rejects, report)."""

    INPUT = "input"
    OUTPUTS = "outputs"


# A run in one of these has reached its end (a `completed` run only once no delivery is pending): nothing
# else of it is ever swept.
SWEEPABLE = (RunStatus.COMPLETED, RunStatus.DELIVERED, RunStatus.FAILED)


@dataclass(frozen=True, slots=True)
class SweepQuery:
    """Runs whose `part` is still on disk and is due to go: finished before `finished_before`, or
    acknowledged before `acked_before`. Of `pipeline`, or (with `pipeline` None) of every pipeline but
    `others_than` (runs of no pipeline, or of one no longer in the config, included)."""

    part: SweptPart
    finished_before: datetime | None
    acked_before: datetime | None
    pipeline: str | None = None
    others_than: frozenset[str] = frozenset()
    limit: int = 500


class Store(Protocol):
    """Durable state. Every method is atomic; a returned call has reached stable storage."""

    async def insert_run(self, run: Run, events: Sequence[Event] = (), *, first_of_content: bool = False) -> None:
        """Record a new run with its deliveries and `events`, in one transaction. ConflictError if the id exists.
        A run that is not a duplicate becomes its content's original if it is the first (see `originals`); with
        `first_of_content` it must be: DuplicateContentError, and nothing written, if another run is already."""

    async def update_run(self, run: Run, *, expect: RunStatus | None = None, events: Sequence[Event] = (),
                         deliveries: Sequence[Delivery] = (), remember: Remembered | None = None,
                         owner: str | None = None, audit: AuditEntry | None = None) -> bool:
        """Write the run's mutable fields; with `expect`, only if the stored status is still that one. The
        given deliveries (saved), events (queued), mapping to remember and audit entry go in the same
        transaction, and only if the run changed.

        `owner` is the node writing. A claim (`expect` queued, the run now `processing`) makes it the run's
        owner; any other write with an owner goes through only while the run is still that node's, so a
        node whose work was taken over cannot finish it as well. A run that is not `processing` has no owner."""

    async def get_run(self, run_id: str) -> Run | None: ...

    async def list_runs(self, query: RunQuery) -> tuple[list[Run], str | None]:
        """Runs newest first (or oldest first), and the cursor for the next page or None."""

    async def queued_heads(self, per_connection: int) -> list[Run]:
        """The oldest `per_connection` queued runs of each connection that has queued runs, oldest first."""

    async def originals(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """For each (connection, sha256) in `keys`, the id of that connection's first run whose input had
        this sha256 and which is not itself a duplicate; keys without one are left out."""

    async def save_delivery(self, delivery: Delivery, owner: str | None = None) -> bool:
        """Save an attempt's outcome and let the delivery go; with `owner`, only while it still holds it."""

    async def due_deliveries(self, now: datetime, limit: int = 100, owner: str | None = None) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, the most overdue first. With `owner`, claimed for it
        (those no node holds, or it holds already), at once: no two nodes get the same one."""

    async def add_events(self, events: Sequence[Event]) -> None:
        """Queue events (an event already queued for the same subscriber is kept as it is)."""

    async def save_event(self, event: Event, owner: str | None = None) -> bool:
        """Record an attempt's outcome (status, attempts, last error, next attempt) and let the event go;
        with `owner`, only while it still holds it."""

    async def due_events(self, now: datetime, limit: int = 100, owner: str | None = None) -> list[Event]:
        """Pending events whose next attempt is due, oldest first; with `owner`, claimed as deliveries are."""

    async def events_of(self, event_type: str | None = None) -> list[Event]:
        """Every queued, sent or failed event (of one type), oldest first."""

    async def list_events(self, status: DeliveryStatus | None = None, limit: int = 100,
                          cursor: str | None = None) -> tuple[list[Event], str | None]:
        """Events (of one status), newest first, and the cursor for the next page or None."""

    async def event_counts(self) -> dict[str, int]:
        """Events by status, for metrics."""

    async def next_due(self, owner: str | None = None) -> datetime | None:
        """The earliest next attempt of any pending delivery or event (with `owner`: that no other node holds)."""

    async def save_upload(self, upload: Upload, *, expect: Upload | None = None) -> bool:
        """Write the upload (not its parts: see `save_part`). With `expect`, only if the stored state, offset,
        run id, holder and time of the last change (a part recorded changes it) are still `expect`'s: False,
        and nothing written, if not."""

    async def get_upload(self, upload_id: str) -> Upload | None:
        """The upload with its parts (`parts`, `part_records`, and `records` their sum)."""

    async def save_part(self, upload_id: str, number: int, etag: str, records: int) -> bool:
        """Record part `number` (one recorded before under that number is replaced) of an upload that is open
        and has no run id yet (no complete has begun), which becomes `uploading`; False if it is not such an
        upload. Parts recorded at once are all kept."""

    async def claim_upload(self, upload_id: str, holder: str, seconds: float) -> Upload | None:
        """Hold the upload as `holder` for `seconds` from now (by the store's clock), unless another holder's
        time is not up; again by the same holder, for longer. The upload as held, or None (held by another, or
        no such upload). A write with `expect` lets go (holder None) or keeps holding."""

    async def release_uploads(self, holder_prefix: str) -> int:
        """Let go of every upload whose holder's name starts with `holder_prefix`; how many."""

    async def stale_uploads(self, states: tuple[UploadState, ...], updated_before: datetime,
                            limit: int = 100) -> list[Upload]:
        """Uploads in one of `states` not updated since `updated_before`, oldest first."""

    async def disable_target(self, target: str, reason: str) -> None:
        """Stop delivering to `target` (a webhook URL that answered 410 Gone) until it is enabled again."""

    async def enable_target(self, target: str) -> None: ...

    async def disabled_targets(self) -> dict[str, str]:
        """target -> why it was disabled."""

    async def status_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(runs by status, uploads by state), for metrics."""

    async def run_counts(self, since_id: str) -> list[tuple[str, str, int]]:
        """(connection, status, runs) of the runs with an id >= `since_id`: a range of the id index."""

    async def runs_per_day(self, first_day: datetime, days: int,
                           connection: str | None = None) -> list[tuple[str, str, int]]:
        """(day YYYY-MM-DD, status, runs) for `days` days from `first_day` (a UTC midnight), by run ids (which
        sort by creation time): ranges of an index, never the whole table."""

    async def failing_deliveries(self, since_id: str) -> dict[str, int]:
        """connection -> runs with an id >= `since_id` that have a delivery failed for good."""

    async def count_by_connection(self, status: RunStatus) -> dict[str, int]:
        """connection -> runs in `status` now (a range of the status index)."""

    async def last_arrivals(self, connections: Collection[str]) -> dict[str, datetime]:
        """connection -> when its newest run was created (one index probe per connection)."""

    async def remember_mapping(self, connection: str, header_key: str, mapping: dict[str, str]) -> None: ...

    async def recall_mapping(self, connection: str, header_key: str) -> dict[str, str] | None: ...

    async def set_pipeline_active(self, pipeline: str, active: bool) -> None: ...

    async def pipeline_overrides(self) -> dict[str, bool]: ...

    async def managed_objects(self) -> list[ManagedObject]:
        """Every object created over the API, in the order they were created."""

    async def save_object(self, obj: ManagedObject, *, expect: int | None, audit: AuditEntry,
                          events: Sequence[Event] = ()) -> bool:
        """With `expect` None, create the object (ConflictError if its kind and name exist); else replace
        the stored one if its version is still `expect` (False if not, or if it is gone). The audit entry
        and events go in the same transaction, and only if the object was written."""

    async def delete_object(self, kind: ObjectKind, name: str, *, expect: int, audit: AuditEntry,
                            events: Sequence[Event] = ()) -> bool:
        """Delete the object if its version is still `expect`, with its audit entry and events."""

    async def add_audit(self, entry: AuditEntry, events: Sequence[Event] = ()) -> None: ...

    async def list_audit(self, limit: int = 100, cursor: str | None = None) -> tuple[list[AuditEntry], str | None]:
        """Audit entries newest first, and the cursor for the next page or None."""

    async def arrival_state(self, pipeline: str, missed: int = 10) -> ArrivalState | None:
        """What the schedule judged of `pipeline`'s expected arrivals, with its last `missed` missed windows
        (newest first); None before it was first watched."""

    async def save_arrival_state(self, pipeline: str, since: datetime, checked_until: datetime | None,
                                 missed: Sequence[Missed] = (), events: Sequence[Event] = (),
                                 expect: str = "") -> None:
        """Record what was judged, the windows found missed (one already recorded is kept as it was) and
        their events, in one transaction."""

    async def received(self, pipeline: str, after: datetime | None, until: datetime | None,
                       min_rows: int) -> list[Received]:
        """The pipeline's runs created in (`after`, `until`], grouped by status and by whether they have at
        least `min_rows` valid rows or no rows at all."""

    async def sweep_candidates(self, query: SweepQuery) -> list[Run]:
        """Runs in a SWEEPABLE state (a `completed` one without a pending delivery) whose `query.part` was
        not swept yet and is due to go, oldest first."""

    async def mark_swept(self, run_id: str, part: SweptPart) -> bool:
        """Record in the run's meta (`swept.<part>`: true) that the part is gone, only while the run is
        still in a SWEEPABLE state; False when it no longer is. Nothing else of the run is written."""

    async def join(self, node: Node) -> None:
        """Record a node as alive (its heartbeat now)."""

    async def heartbeat(self, node_id: str, now: datetime) -> bool:
        """The node is alive at `now`; False when it is no longer recorded (taken for dead meanwhile)."""

    async def leave(self, node_id: str) -> TakenOver:
        """A node stopping: the work it still holds goes back (runs queued again), and it is forgotten."""

    async def take_over(self, dead_before: datetime, by: str) -> list[TakenOver]:
        """Every node but `by` whose last heartbeat is before `dead_before` is forgotten, and the work it
        held goes back: its runs are queued again, its deliveries and events are free to be claimed. Runs
        left `processing` by no known node (written before nodes were recorded) go back too."""

    async def nodes(self) -> list[Node]:
        """The nodes recorded, oldest first, each with the work it holds."""

    async def lead(self, name: str) -> bool:
        """Whether this process leads `name` (at most one of the processes sharing the store does at a
        time; one whose holder dies is free to be taken). Asked again before each turn of the guarded work."""

    async def listen(self, wake: Callable[[str], None]) -> None:
        """Call `wake(kind)` ("runs", "deliveries" or "events") when work of that kind becomes ready, or
        ("objects") when an object was created, changed or deleted over the API, until
        cancelled: other processes sharing the store wake this one early. Returns at once where nothing else
        shares it."""
    async def save_session(self, session: OperatorSession) -> None:
        """Record a new console session (its token hash is new: 256 random bits)."""

    async def get_session(self, token_hash: str, now: datetime) -> OperatorSession | None:
        """The session of this token hash if it expires after `now`; None if unknown or expired."""

    async def delete_session(self, token_hash: str) -> bool:
        """End a session (a logout); False if there was none."""

    async def delete_expired_sessions(self, now: datetime) -> int:
        """Delete the sessions that expired at or before `now`; how many went."""

    # What the nodes of one store share about logins and spaces. Times are wall-clock (UTC): each node's
    # monotonic clock is its own.

    async def login_failed(self, ip: str, now: datetime, *, after: int, within: float,
                           duration: float) -> datetime | None:
        """Record a failed login from `ip` at `now`. When it makes `after` failures within `within` seconds,
        recorded by any node, `ip` is banned until `now + duration` and its failures are forgotten: that
        time is returned (else None). Atomic: two nodes recording at once both count."""

    async def banned_until(self, ip: str, now: datetime) -> datetime | None:
        """Until when `ip` is banned, or None when it is not banned at `now`."""

    async def ban_changes(self, after: int) -> tuple[dict[str, datetime | None], int]:
        """The bans and unbans recorded after the mark `after` (0: all there are), as ip -> banned until
        (None: lifted), and the mark to ask after next time. Marks grow in the order changes commit."""

    async def unban(self, ip: str, now: datetime) -> bool:
        """Lift `ip`'s ban and forget its failures; True when it was banned at `now`."""

    async def space_use(self) -> dict[str, int]:
        """connection -> bytes used in its space, as the nodes have counted them."""

    async def add_space_use(self, deltas: dict[str, int]) -> dict[str, int]:
        """Add each delta to its connection's bytes used (never below 0), atomically with what other nodes
        add; returns every connection's bytes used after."""

    async def set_space_use(self, connection: str, used: int) -> None:
        """A connection's bytes used as a recount of its space found them."""

    async def close(self) -> None: ...
