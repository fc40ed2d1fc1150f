"""The `Store` seam: the few durable operations feedd needs, whatever keeps them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
    ObjectKind,
    Received,
    Run,
    RunStatus,
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

    async def insert_run(self, run: Run, events: Sequence[Event] = ()) -> None:
        """Record a new run with its deliveries and `events`, in one transaction. ConflictError if the id exists."""

    async def update_run(self, run: Run, *, expect: RunStatus | None = None, events: Sequence[Event] = (),
                         deliveries: Sequence[Delivery] = (), remember: Remembered | None = None) -> bool:
        """Write the run's mutable fields; with `expect`, only if the stored status is still that one. The
        given deliveries (saved), events (queued) and mapping to remember go in the same transaction, and only
        if the run changed."""

    async def get_run(self, run_id: str) -> Run | None: ...

    async def list_runs(self, query: RunQuery) -> tuple[list[Run], str | None]:
        """Runs newest first (or oldest first), and the cursor for the next page or None."""

    async def queued_heads(self, per_connection: int) -> list[Run]:
        """The oldest `per_connection` queued runs of each connection that has queued runs, oldest first."""

    async def originals(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """For each (connection, sha256) in `keys`, the id of that connection's first run whose input had
        this sha256 and which is not itself a duplicate; keys without one are left out."""

    async def save_delivery(self, delivery: Delivery) -> None: ...

    async def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, the most overdue first."""

    async def add_events(self, events: Sequence[Event]) -> None:
        """Queue events (an event already queued for the same subscriber is kept as it is)."""

    async def save_event(self, event: Event) -> None:
        """Record an attempt's outcome: status, attempts, last error, next attempt."""

    async def due_events(self, now: datetime, limit: int = 100) -> list[Event]:
        """Pending events whose next attempt is due, oldest first."""

    async def events_of(self, event_type: str | None = None) -> list[Event]:
        """Every queued, sent or failed event (of one type), oldest first."""

    async def list_events(self, status: DeliveryStatus | None = None, limit: int = 100,
                          cursor: str | None = None) -> tuple[list[Event], str | None]:
        """Events (of one status), newest first, and the cursor for the next page or None."""

    async def event_counts(self) -> dict[str, int]:
        """Events by status, for metrics."""

    async def next_due(self) -> datetime | None:
        """The earliest next attempt of any pending delivery or event."""

    async def save_upload(self, upload: Upload) -> None: ...

    async def get_upload(self, upload_id: str) -> Upload | None: ...

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
