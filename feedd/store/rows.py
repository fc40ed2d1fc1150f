"""`Rows`: how both stores turn a table's row into a model value and a model value into a row's values.

The tables of the SQLite and the PostgreSQL store hold the same columns in the same order, with JSON as text;
they differ only in how a time is kept (ISO text in SQLite, timestamptz in PostgreSQL), so each store gives
its own pair of time functions and keeps its own SQL. Rows read here are anything indexed by column name
(sqlite3.Row, psycopg's dict rows).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from feedd.model import (
    AuditAction,
    AuditEntry,
    Counts,
    Delivery,
    DeliveryStatus,
    Direction,
    Event,
    ManagedObject,
    Missed,
    Node,
    ObjectKind,
    RowError,
    Run,
    RunError,
    RunStatus,
    Source,
    SourceKind,
    Upload,
    UploadState,
    utcnow,
)
from feedd.store import OperatorSession, Remembered


def owner_of(run: Run, owner: str | None) -> str | None:
    """Who holds `run` once written by `owner`: only a `processing` run is anybody's."""
    return owner if run.status is RunStatus.PROCESSING else None


class Row(Protocol):
    """A row as a store reads it: its values by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Rows:
    """The row codec of one store: `encode` makes a time (or None) a value to write, `decode` reads one back."""

    encode: Callable[[datetime | None], Any]
    decode: Callable[[Any], datetime | None]

    def _at(self, value: Any) -> datetime:
        """A time a column always holds; now, should it be missing all the same."""
        return self.decode(value) or utcnow()

    def run_row(self, run: Run) -> tuple[Any, ...]:
        """The values of the runs table's columns, in its order, run_id first."""
        return (
            run.run_id, run.pipeline, run.connection, str(run.direction), str(run.status), str(run.source.kind),
            run.source.name, run.source.size, run.source.sha256, run.spool_path, run.counts.rows, run.counts.valid,
            run.counts.invalid, json.dumps(run.mapping),
            json.dumps([[e.row, e.field, e.code, e.message] for e in run.errors]),
            run.error.code if run.error else None, run.error.message if run.error else None, run.duplicate_of,
            json.dumps(run.meta), self.encode(run.created_at), self.encode(run.started_at),
            self.encode(run.finished_at), self.encode(run.acknowledged_at),
        )

    def node_row(self, node: Node) -> tuple[Any, ...]:
        return node.node_id, self.encode(node.started_at), self.encode(node.heartbeat_at), json.dumps(node.info)

    def node_from(self, row: Row) -> Node:
        """A node from its row, with the work it holds (`runs`: a JSON list of ids, `deliveries`, `events`)."""
        return Node(node_id=row["node_id"], started_at=self._at(row["started_at"]),
                    heartbeat_at=self._at(row["heartbeat_at"]), info=json.loads(row["info"]),
                    runs=tuple(sorted(json.loads(row["runs"]) if isinstance(row["runs"], str) else row["runs"])),
                    deliveries=int(row["deliveries"]), events=int(row["events"]))

    def run_from(self, row: Row, deliveries: tuple[Delivery, ...]) -> Run:
        """A run from its row, with its deliveries (each store reads those its own way)."""
        return Run(
            run_id=row["run_id"],
            pipeline=row["pipeline"],
            connection=row["connection"],
            direction=Direction(row["direction"]),
            status=RunStatus(row["status"]),
            source=Source(SourceKind(row["source_kind"]), row["source_name"], row["source_size"],
                          row["source_sha256"]),
            spool_path=row["spool_path"],
            counts=Counts(row["rows"], row["valid"], row["invalid"]),
            mapping=json.loads(row["mapping"]),
            errors=tuple(RowError(*e) for e in json.loads(row["errors"])),
            error=RunError(row["error_code"], row["error_message"] or "") if row["error_code"] else None,
            deliveries=deliveries,
            created_at=self._at(row["created_at"]),
            started_at=self.decode(row["started_at"]),
            finished_at=self.decode(row["finished_at"]),
            acknowledged_at=self.decode(row["acknowledged_at"]),
            duplicate_of=row["duplicate_of"],
            meta=json.loads(row["meta"]),
        )

    def delivery_row(self, d: Delivery) -> tuple[Any, ...]:
        return (d.run_id, d.destination, str(d.status), d.attempts, d.last_error, self.encode(d.delivered_at),
                self.encode(d.next_attempt_at))

    def delivery(self, run_id: str, destination: str, status: str, attempts: int, last_error: str | None,
                 delivered_at: Any, next_attempt_at: Any) -> Delivery:
        """A delivery from its columns' values, in the table's order."""
        return Delivery(run_id=run_id, destination=destination, status=DeliveryStatus(status), attempts=attempts,
                        last_error=last_error, delivered_at=self.decode(delivered_at),
                        next_attempt_at=self.decode(next_attempt_at))

    def delivery_from(self, row: Row) -> Delivery:
        return self.delivery(row["run_id"], row["destination"], row["status"], row["attempts"], row["last_error"],
                             row["delivered_at"], row["next_attempt_at"])

    def event_row(self, e: Event) -> tuple[Any, ...]:
        return (e.event_id, e.url, e.type, e.body, str(e.status), e.attempts, e.last_error,
                self.encode(e.next_attempt_at), self.encode(e.created_at))

    def event_from(self, row: Row) -> Event:
        return Event(event_id=row["event_id"], url=row["url"], type=row["type"], body=row["body"],
                     status=DeliveryStatus(row["status"]), attempts=row["attempts"], last_error=row["last_error"],
                     next_attempt_at=self.decode(row["next_attempt_at"]), created_at=self._at(row["created_at"]))

    def mapping_row(self, remembered: Remembered) -> tuple[Any, ...]:
        """A remembered mapping's row, stamped now."""
        return remembered.connection, remembered.header_key, json.dumps(remembered.mapping), self.encode(utcnow())

    def audit_row(self, e: AuditEntry) -> tuple[Any, ...]:
        return (self.encode(e.at), e.actor, str(e.action), e.kind, e.name,
                None if e.before is None else json.dumps(e.before), None if e.after is None else json.dumps(e.after))

    def audit_from(self, row: Row) -> AuditEntry:
        return AuditEntry(row["actor"], AuditAction(row["action"]), row["kind"], row["name"],
                          json.loads(row["before"]) if row["before"] else None,
                          json.loads(row["after"]) if row["after"] else None, self._at(row["at"]))

    def object_from(self, row: Row) -> ManagedObject:
        return ManagedObject(ObjectKind(row["kind"]), row["name"], json.loads(row["body"]), row["version"],
                             self._at(row["created_at"]), self._at(row["updated_at"]))

    def missed(self, expected_by: Any, opens: Any, deadline: Any, last_arrival_at: Any, reported_at: Any) -> Missed:
        """A missed window from its columns' values, in the table's order after the pipeline."""
        return Missed(self._at(expected_by), self._at(opens), self._at(deadline), self.decode(last_arrival_at),
                      self._at(reported_at))

    def upload_row(self, u: Upload) -> tuple[Any, ...]:
        """The values of the uploads table's columns, in its order, upload_id first, then the holder. The parts
        are rows of upload_parts: the old `parts` and `records` columns are written empty."""
        return (u.upload_id, str(u.kind), str(u.state), u.connection, u.pipeline, u.total_parts, "{}", 0, u.offset,
                u.length, u.filename, u.run_id, json.dumps(u.meta), self.encode(u.created_at),
                self.encode(u.updated_at), self.encode(u.expires_at), u.holder)

    def upload_from(self, row: Row, parts: Sequence[Sequence[Any]]) -> Upload:
        """An upload from its row and its parts' (part number, etag, records), in part number order."""
        return Upload(
            upload_id=row["upload_id"],
            kind=SourceKind(row["kind"]),
            state=UploadState(row["state"]),
            connection=row["connection"],
            pipeline=row["pipeline"],
            total_parts=row["total_parts"],
            parts={int(n): etag for n, etag, _ in parts},
            records=sum(int(records) for _, _, records in parts),
            offset=row["offset"],
            length=row["length"],
            filename=row["filename"],
            run_id=row["run_id"],
            meta=json.loads(row["meta"]),
            created_at=self._at(row["created_at"]),
            updated_at=self._at(row["updated_at"]),
            expires_at=self.decode(row["expires_at"]),
            part_records={int(n): int(records) for n, _, records in parts},
            holder=row["holder"],
        )

    def session_from(self, row: Row) -> OperatorSession:
        return OperatorSession(row["token_hash"], row["operator"], row["role"], row["password_tag"],
                               self._at(row["created_at"]), self._at(row["expires_at"]))


# An address's row in `bans` outlives its last change by this many seconds (or the ban window, if longer),
# so that every node reads an unban before the row goes.
BAN_ROWS_KEPT = 3600.0


def failures_within(text: str | None, now: datetime, within: float) -> list[float]:
    """An address's failed logins (epoch seconds, as stored in `bans.failures`) still within the window,
    and one more at `now`."""
    at = now.timestamp()
    return [*(t for t in (json.loads(text) if text else []) if t > at - within), at]
