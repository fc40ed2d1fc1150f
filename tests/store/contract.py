"""The Store contract as a reusable suite: subclass `StoreContract` and provide a `store` fixture."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta, timezone

import pytest

from feedd.errors import ConflictError, DuplicateContentError
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
    id_floor,
    new_id,
    utcnow,
)
from feedd.store import OperatorSession, Remembered, RunQuery, Store, SweepQuery, SweptPart
from tests.helpers import eventually


def make_run(connection: str = "acme", pipeline: str | None = "acme-hr", sha: str = "0" * 64, **kw: object) -> Run:
    fields: dict[str, object] = {
        "run_id": new_id(),
        "pipeline": pipeline,
        "connection": connection,
        "direction": Direction.INBOUND,
        "status": RunStatus.QUEUED,
        "source": Source(SourceKind.SFTP, "inbox/a.csv", 12, sha),
        "spool_path": "/spool/a.csv",
    }
    fields.update(kw)
    return Run(**fields)  # type: ignore[arg-type]


class StoreContract:
    """Behaviour every Store must have. Each test gets a fresh, empty store."""

    async def test_insert_then_get_round_trips_every_field(self, store: Store) -> None:
        now = utcnow()
        run = make_run(
            counts=Counts(10, 8, 2),
            mapping={"email": "E-mail"},
            errors=(RowError(3, "email", "invalid_email", "'x' is not an email"),),
            error=RunError("too_many_errors", "20% invalid"),
            deliveries=(Delivery("", "directory:/out"),),
            started_at=now,
            meta={"encoding": "utf-8"},
        )
        run = Run(**{**{f: getattr(run, f) for f in run.__dataclass_fields__},
                     "deliveries": (Delivery(run.run_id, "directory:/out"), Delivery(run.run_id, "outbox"))})
        await store.insert_run(run)
        got = await store.get_run(run.run_id)
        assert got == run

    async def test_duplicate_run_id_is_a_conflict(self, store: Store) -> None:
        run = make_run()
        await store.insert_run(run)
        with pytest.raises(ConflictError):
            await store.insert_run(run)

    async def test_queued_heads_are_the_oldest_queued_runs_of_each_connection(self, store: Store) -> None:
        runs = [make_run("a"), make_run("a"), make_run("a"), make_run("b"), make_run("c", status=RunStatus.COMPLETED),
                make_run("b", status=RunStatus.PROCESSING), make_run("b")]
        for run in runs:
            await store.insert_run(run)
        heads = await store.queued_heads(2)
        assert [r.run_id for r in heads] == [runs[0].run_id, runs[1].run_id, runs[3].run_id, runs[6].run_id]
        assert [r.run_id for r in await store.queued_heads(1)] == [runs[0].run_id, runs[3].run_id]

    async def test_unknown_run_is_none(self, store: Store) -> None:
        assert await store.get_run("nope") is None

    async def test_update_with_expected_status_is_compare_and_set(self, store: Store) -> None:
        run = make_run()
        await store.insert_run(run)
        processing = Run(**{**_fields(run), "status": RunStatus.PROCESSING, "started_at": utcnow()})
        assert await store.update_run(processing, expect=RunStatus.QUEUED)
        # a second claimer loses: the stored status is no longer `queued`
        assert not await store.update_run(processing, expect=RunStatus.QUEUED)
        done = Run(**{**_fields(processing), "status": RunStatus.COMPLETED, "counts": Counts(3, 3, 0)})
        assert await store.update_run(done)
        got = await store.get_run(run.run_id)
        assert got is not None and got.status is RunStatus.COMPLETED and got.counts == Counts(3, 3, 0)

    async def test_list_filters_and_paginates_newest_first(self, store: Store) -> None:
        ids = []
        for i in range(7):
            run = make_run(connection="acme" if i % 2 == 0 else "globex",
                           status=RunStatus.FAILED if i == 4 else RunStatus.QUEUED,
                           acknowledged_at=utcnow() if i == 6 else None)
            await store.insert_run(run)
            ids.append(run.run_id)
        assert ids == sorted(ids), "run ids sort by creation time"
        page, cursor = await store.list_runs(RunQuery(limit=3))
        assert [r.run_id for r in page] == ids[::-1][:3] and cursor == ids[4]
        page, cursor = await store.list_runs(RunQuery(limit=3, cursor=cursor))
        assert [r.run_id for r in page] == ids[::-1][3:6]
        page, cursor = await store.list_runs(RunQuery(limit=3, cursor=cursor))
        assert [r.run_id for r in page] == [ids[0]] and cursor is None
        acme, _ = await store.list_runs(RunQuery(connection="acme"))
        assert [r.run_id for r in acme] == [ids[6], ids[4], ids[2], ids[0]]
        failed, _ = await store.list_runs(RunQuery(statuses=(RunStatus.FAILED,)))
        assert [r.run_id for r in failed] == [ids[4]]
        acked, _ = await store.list_runs(RunQuery(acknowledged=True))
        assert [r.run_id for r in acked] == [ids[6]]
        allowed, _ = await store.list_runs(RunQuery(connections=frozenset({"globex"})))
        assert {r.connection for r in allowed} == {"globex"} and len(allowed) == 3
        none, _ = await store.list_runs(RunQuery(connections=frozenset()))
        assert none == []
        oldest, _ = await store.list_runs(RunQuery(statuses=(RunStatus.QUEUED,), oldest_first=True, limit=2))
        assert [r.run_id for r in oldest] == [ids[0], ids[1]]

    async def test_originals_are_the_first_runs_with_that_content(self, store: Store) -> None:
        first = make_run(sha="a" * 64)
        await store.insert_run(first)
        await store.insert_run(make_run(sha="a" * 64, duplicate_of=first.run_id))
        await store.insert_run(make_run(sha="a" * 64))  # a later one, processed again on request
        other = make_run(connection="other", sha="b" * 64)
        await store.insert_run(other)
        found = await store.originals({("acme", "a" * 64), ("acme", "b" * 64), ("other", "b" * 64)})
        assert found == {("acme", "a" * 64): first.run_id, ("other", "b" * 64): other.run_id}
        assert await store.originals(set()) == {}

    async def test_deliveries_are_saved_and_updated(self, store: Store) -> None:
        run = make_run()
        await store.insert_run(run)
        await store.save_delivery(Delivery(run.run_id, "webhook:http://x", attempts=1, last_error="HTTP 503",
                                           next_attempt_at=utcnow() + timedelta(seconds=5)))
        done_at = utcnow()
        await store.save_delivery(Delivery(run.run_id, "webhook:http://x", DeliveryStatus.DELIVERED, 2, None,
                                           done_at))
        got = await store.get_run(run.run_id)
        assert got is not None
        [delivery] = got.deliveries
        assert delivery.status is DeliveryStatus.DELIVERED and delivery.attempts == 2
        assert delivery.delivered_at == done_at and delivery.last_error is None

    async def test_due_deliveries_are_pending_ones_whose_time_came_most_overdue_first(self, store: Store) -> None:
        now = utcnow()
        run = make_run()
        await store.insert_run(run)
        for destination, status, at in (("late", DeliveryStatus.PENDING, now - timedelta(minutes=5)),
                                        ("later", DeliveryStatus.PENDING, now - timedelta(minutes=1)),
                                        ("future", DeliveryStatus.PENDING, now + timedelta(minutes=1)),
                                        ("done", DeliveryStatus.DELIVERED, now - timedelta(minutes=9))):
            await store.save_delivery(Delivery(run.run_id, destination, status, next_attempt_at=at))
        due = await store.due_deliveries(now)
        assert [d.destination for d in due] == ["late", "later"]
        assert [d.destination for d in await store.due_deliveries(now, limit=1)] == ["late"]
        assert await store.next_due() == now - timedelta(minutes=5)

    async def test_events_are_queued_once_per_subscriber_and_sent_when_due(self, store: Store) -> None:
        now = utcnow()
        first, second = new_id(), new_id()
        e1 = Event(first, "http://a/hook", "run.queued", '{"n": 1}', created_at=now - timedelta(seconds=3))
        e2 = Event(first, "http://b/hook", "run.queued", '{"n": 1}', created_at=now - timedelta(seconds=2))
        e3 = Event(second, "http://a/hook", "run.failed", '{"n": 2}', next_attempt_at=now + timedelta(minutes=1),
                   created_at=now - timedelta(seconds=1))
        await store.add_events([e1, e2, e3])
        await store.add_events([replace(e1, body='{"n": "again"}')])  # queued already: kept as it is
        assert await store.due_events(now) == [e1, e2]
        await store.save_event(replace(e1, status=DeliveryStatus.DELIVERED, attempts=1))
        retry = replace(e2, attempts=1, last_error="HTTP 503", next_attempt_at=now + timedelta(seconds=30))
        await store.save_event(retry)
        assert await store.due_events(now) == []
        assert await store.due_events(now + timedelta(seconds=30)) == [retry]
        assert await store.next_due() == now + timedelta(seconds=30)
        assert await store.event_counts() == {"delivered": 1, "pending": 2}
        assert [e.url for e in await store.events_of("run.queued")] == ["http://a/hook", "http://b/hook"]
        assert await store.events_of() == [replace(e1, status=DeliveryStatus.DELIVERED, attempts=1), retry, e3]
        page, cursor = await store.list_events(limit=2)
        assert page == [e3, retry] and cursor is not None
        page, cursor = await store.list_events(limit=2, cursor=cursor)
        assert [(e.event_id, e.url) for e in page] == [(first, "http://a/hook")] and cursor is None
        delivered, _ = await store.list_events(DeliveryStatus.DELIVERED)
        assert [e.status for e in delivered] == [DeliveryStatus.DELIVERED]

    async def test_a_run_update_saves_its_deliveries_and_events_only_if_the_run_changed(self, store: Store) -> None:
        run = make_run()
        queued = Event(new_id(), "http://a/hook", "run.queued", "{}")
        await store.insert_run(run, events=[queued])
        done = replace(run, status=RunStatus.COMPLETED)
        completed = Event(new_id(), "http://a/hook", "run.completed", "{}")
        delivery = Delivery(run.run_id, "outbox")
        assert not await store.update_run(done, expect=RunStatus.PROCESSING, events=[completed],
                                          deliveries=[delivery])
        got = await store.get_run(run.run_id)
        assert got is not None and got.status is RunStatus.QUEUED and got.deliveries == ()
        assert await store.events_of("run.completed") == []
        # An event queued already is kept as it is, and does not keep the others or the run out.
        assert await store.update_run(done, expect=RunStatus.QUEUED, events=[completed, queued],
                                      deliveries=[delivery])
        got = await store.get_run(run.run_id)
        assert got is not None and got.status is RunStatus.COMPLETED and got.deliveries == (delivery,)
        assert await store.events_of("run.completed") == [completed]
        assert await store.events_of("run.queued") == [queued]

    async def test_uploads_round_trip(self, store: Store) -> None:
        upload = Upload(new_id(), SourceKind.UPLOAD, UploadState.INITIATED, "acme", "acme-out", total_parts=3)
        await store.save_upload(upload)
        assert await store.get_upload(upload.upload_id) == upload
        later = Upload(**{**_fields(upload), "state": UploadState.COMPLETED, "run_id": "R1", "meta": {"a": 1}})
        await store.save_upload(later)
        assert await store.get_upload(upload.upload_id) == later
        assert await store.get_upload("missing") is None

    async def test_stale_uploads_and_status_counts(self, store: Store) -> None:
        now = utcnow()
        old = Upload(new_id(), SourceKind.UPLOAD, UploadState.UPLOADING, "acme", "acme-out", total_parts=1,
                     updated_at=now - timedelta(hours=2))
        fresh = Upload(new_id(), SourceKind.UPLOAD, UploadState.INITIATED, "acme", "acme-out", total_parts=1,
                       updated_at=now)
        done = Upload(new_id(), SourceKind.UPLOAD, UploadState.COMPLETED, "acme", "acme-out", total_parts=1,
                      updated_at=now - timedelta(hours=3))
        for u in (old, fresh, done):
            await store.save_upload(u)
        stale = await store.stale_uploads((UploadState.INITIATED, UploadState.UPLOADING), now - timedelta(hours=1))
        assert [u.upload_id for u in stale] == [old.upload_id]
        await store.insert_run(make_run())
        await store.insert_run(make_run(sha="1" * 64))
        runs, uploads = await store.status_counts()
        assert runs == {"queued": 2} and uploads == {"uploading": 1, "initiated": 1, "completed": 1}

    async def test_disabled_targets(self, store: Store) -> None:
        assert await store.disabled_targets() == {}
        await store.disable_target("http://x/hook", "410 Gone")
        await store.disable_target("http://x/hook", "410 Gone again")
        assert await store.disabled_targets() == {"http://x/hook": "410 Gone again"}
        await store.enable_target("http://x/hook")
        assert await store.disabled_targets() == {}

    async def test_mapping_memory_is_per_connection_and_header_set(self, store: Store) -> None:
        await store.remember_mapping("acme", "h1", {"email": "Mail"})
        await store.remember_mapping("acme", "h1", {"email": "E-Mail"})
        await store.remember_mapping("globex", "h1", {"email": "x"})
        assert await store.recall_mapping("acme", "h1") == {"email": "E-Mail"}
        assert await store.recall_mapping("acme", "h2") is None

    async def test_a_mapping_is_remembered_with_the_run_that_used_it_or_not_at_all(self, store: Store) -> None:
        run = make_run()
        await store.insert_run(run)
        done = replace(run, status=RunStatus.COMPLETED)
        # The run was not in the state expected: neither it nor its mapping is written.
        assert not await store.update_run(done, expect=RunStatus.PROCESSING,
                                          remember=Remembered(run.connection, "h1", {"email": "Mail"}))
        assert await store.recall_mapping(run.connection, "h1") is None
        assert await store.update_run(done, expect=RunStatus.QUEUED,
                                      remember=Remembered(run.connection, "h1", {"email": "Mail"}))
        assert await store.recall_mapping(run.connection, "h1") == {"email": "Mail"}

    async def test_managed_objects_are_created_once_and_changed_only_at_their_version(self, store: Store) -> None:
        obj = ManagedObject(ObjectKind.CONNECTION, "acme", {"quota": "1GiB"})
        create = AuditEntry("ops", AuditAction.CREATE, "connection", "acme", None, {"quota": "1GiB"})
        event = Event(new_id(), "http://127.0.0.1:9/e", "config.changed", "{}")
        assert await store.save_object(obj, expect=None, audit=create, events=[event])
        with pytest.raises(ConflictError):
            await store.save_object(obj, expect=None, audit=create)
        changed = replace(obj, body={"quota": "2GiB"}, version=2)
        update = AuditEntry("ops", AuditAction.UPDATE, "connection", "acme", obj.body, changed.body)
        # A writer that read version 2 is too late: nothing is written, no audit entry, no event.
        assert not await store.save_object(changed, expect=2, audit=update, events=[event])
        assert await store.save_object(changed, expect=1, audit=update)
        [stored] = await store.managed_objects()
        assert (stored.kind, stored.name, stored.body, stored.version) == (ObjectKind.CONNECTION, "acme",
                                                                           {"quota": "2GiB"}, 2)
        delete = AuditEntry("ops", AuditAction.DELETE, "connection", "acme", changed.body, None)
        assert not await store.delete_object(ObjectKind.CONNECTION, "acme", expect=1, audit=delete)
        assert await store.delete_object(ObjectKind.CONNECTION, "acme", expect=2, audit=delete)
        assert await store.managed_objects() == []
        entries, cursor = await store.list_audit()
        assert [e.action for e in entries] == [AuditAction.DELETE, AuditAction.UPDATE, AuditAction.CREATE]
        assert cursor is None and entries[1].before == {"quota": "1GiB"} and entries[1].after == {"quota": "2GiB"}
        assert len(await store.events_of("config.changed")) == 1

    async def test_audit_pages_newest_first(self, store: Store) -> None:
        for n in range(5):
            await store.add_audit(AuditEntry("file", AuditAction.RELOAD, "config", f"r{n}"))
        first, cursor = await store.list_audit(limit=2)
        second, cursor2 = await store.list_audit(limit=2, cursor=cursor)
        third, last = await store.list_audit(limit=2, cursor=cursor2)
        assert [e.name for e in first + second + third] == ["r4", "r3", "r2", "r1", "r0"] and last is None

    async def test_pipeline_overrides(self, store: Store) -> None:
        assert await store.pipeline_overrides() == {}
        await store.set_pipeline_active("a", False)
        await store.set_pipeline_active("b", True)
        await store.set_pipeline_active("a", True)
        assert await store.pipeline_overrides() == {"a": True, "b": True}

    async def test_a_switch_is_never_read_stale_after_its_write(self, store: Store) -> None:
        """A read that started before a switch was written, and ends after, must not leave the old value
        behind for every later read."""
        for i in range(20):  # the read and the write meet in different orders from round to round
            reading = asyncio.create_task(store.pipeline_overrides())
            for _ in range(i % 4):
                await asyncio.sleep(0)
            await store.set_pipeline_active("p", i % 2 == 0)
            await reading
            assert (await store.pipeline_overrides())["p"] is (i % 2 == 0), i

    # Expected arrivals

    async def test_arrival_state_keeps_what_was_judged_and_each_missed_window_once(self, store: Store) -> None:
        assert await store.arrival_state("p") is None
        t0 = utcnow().replace(microsecond=0)
        await store.save_arrival_state("p", t0, None, expect="* * * * *|UTC|5|0")
        state = await store.arrival_state("p")
        assert state is not None and state.since == t0 and state.checked_until is None and state.missed == ()
        assert state.expect == "* * * * *|UTC|5|0"
        windows = [Missed(t0 + timedelta(minutes=n), t0 + timedelta(minutes=n - 1),
                          t0 + timedelta(minutes=n, seconds=5), None if n == 1 else t0,
                          t0 + timedelta(minutes=n, seconds=6)) for n in (1, 2, 3)]
        event = Event("msg_1", "http://x/", "arrival.missed", "{}")
        await store.save_arrival_state("p", t0, windows[1].expected_by, windows[:2], [event])
        # the same window again (a repeat after a crash) is kept as first recorded, not doubled
        again = Missed(windows[1].expected_by, t0, t0, t0, t0)
        await store.save_arrival_state("p", t0, windows[2].expected_by, [again, windows[2]])
        state = await store.arrival_state("p", missed=2)
        assert state is not None and state.checked_until == windows[2].expected_by
        assert state.missed == (windows[2], windows[1])  # newest first, at most 2
        assert len((await store.arrival_state("p")).missed) == 3  # type: ignore[union-attr]
        assert [e.event_id for e in await store.events_of("arrival.missed")] == ["msg_1"]
        assert await store.arrival_state("other") is None

    async def test_received_groups_a_pipelines_runs_in_a_stretch_of_time(self, store: Store) -> None:
        t0 = utcnow()
        made = [
            make_run(created_at=t0 - timedelta(seconds=30), status=RunStatus.COMPLETED, counts=Counts(5, 5, 0)),
            make_run(created_at=t0 - timedelta(seconds=20), status=RunStatus.DELIVERED, counts=Counts(3, 1, 2)),
            make_run(created_at=t0 - timedelta(seconds=10), status=RunStatus.COMPLETED, counts=Counts(0, 0, 0)),
            make_run(created_at=t0 - timedelta(seconds=5), status=RunStatus.FAILED),
            make_run(created_at=t0 + timedelta(seconds=5), status=RunStatus.QUEUED),
            make_run(pipeline="other", created_at=t0 - timedelta(seconds=15), status=RunStatus.COMPLETED),
        ]
        for run in made:
            await store.insert_run(run)
        groups = {(g.status, g.enough): (g.count, g.last_at)
                  for g in await store.received("acme-hr", t0 - timedelta(seconds=25), t0, min_rows=2)}
        assert groups == {("delivered", False): (1, made[1].created_at), ("completed", True): (1, made[2].created_at),
                          ("failed", True): (1, made[3].created_at)}
        every = await store.received("acme-hr", None, None, min_rows=0)
        assert sum(g.count for g in every) == 5
        assert max(g.last_at for g in every) == made[4].created_at

    # Retention

    async def test_sweep_candidates_are_finished_runs_past_their_age_and_never_others(self, store: Store) -> None:
        now = utcnow()
        old = now - timedelta(days=2)
        finished = {s: make_run(status=s, finished_at=old) for s in
                    (RunStatus.COMPLETED, RunStatus.DELIVERED, RunStatus.FAILED, RunStatus.QUEUED,
                     RunStatus.PROCESSING, RunStatus.HELD)}
        young = make_run(status=RunStatus.FAILED, finished_at=now)
        acked = make_run(status=RunStatus.DELIVERED, finished_at=now, acknowledged_at=now - timedelta(hours=2))
        pending = make_run(status=RunStatus.COMPLETED, finished_at=old)
        pending = replace(pending, deliveries=(Delivery(pending.run_id, "outbox"),))
        unmatched = make_run(pipeline=None, status=RunStatus.FAILED, finished_at=old)
        for run in [*finished.values(), young, acked, pending, unmatched]:
            await store.insert_run(run)
        query = SweepQuery(SweptPart.INPUT, now - timedelta(days=1), None, "acme-hr")
        got = {r.run_id for r in await store.sweep_candidates(query)}
        assert got == {finished[s].run_id for s in (RunStatus.COMPLETED, RunStatus.DELIVERED, RunStatus.FAILED)}
        with_ack = replace(query, acked_before=now - timedelta(hours=1))
        assert acked.run_id in {r.run_id for r in await store.sweep_candidates(with_ack)}
        others = SweepQuery(SweptPart.OUTPUTS, now - timedelta(days=1), None, None, frozenset({"acme-hr"}))
        assert [r.run_id for r in await store.sweep_candidates(others)] == [unmatched.run_id]
        assert await store.sweep_candidates(SweepQuery(SweptPart.INPUT, None, None, "acme-hr")) == []

    async def test_mark_swept_writes_only_the_mark_and_only_on_finished_runs(self, store: Store) -> None:
        old = utcnow() - timedelta(days=2)
        run = make_run(status=RunStatus.FAILED, finished_at=old, meta={"records": "/x"})
        queued = make_run(status=RunStatus.QUEUED, finished_at=old)
        for r in (run, queued):
            await store.insert_run(r)
        assert await store.mark_swept(run.run_id, SweptPart.INPUT)
        assert not await store.mark_swept(queued.run_id, SweptPart.INPUT)
        got = await store.get_run(run.run_id)
        assert got is not None and got.meta == {"records": "/x", "swept": {"input": True}}
        assert got.swept("input") and not got.swept("outputs")
        query = SweepQuery(SweptPart.INPUT, utcnow(), None, "acme-hr")
        assert run.run_id not in {r.run_id for r in await store.sweep_candidates(query)}
        outputs = replace(query, part=SweptPart.OUTPUTS)
        assert run.run_id in {r.run_id for r in await store.sweep_candidates(outputs)}
        assert not (await store.get_run(queued.run_id)).meta  # type: ignore[union-attr]

    async def test_mark_swept_keeps_the_rest_of_the_meta_in_its_order(self, store: Store) -> None:
        # what the API shows of a run's meta (its mapping reasons) keeps the order it was written in
        reasons = {"zip": "header", "email": "remembered", "name": "guessed"}
        run = make_run(status=RunStatus.DELIVERED, finished_at=utcnow(), meta={"z": 1, "mapping_reasons": reasons})
        await store.insert_run(run)
        assert await store.mark_swept(run.run_id, SweptPart.OUTPUTS)
        assert await store.mark_swept(run.run_id, SweptPart.INPUT)
        got = await store.get_run(run.run_id)
        assert got is not None and list(got.meta) == ["z", "mapping_reasons", "swept"]
        assert list(got.meta["mapping_reasons"]) == list(reasons) and got.meta["swept"] == {"outputs": True,
                                                                                              "input": True}


    async def test_console_counts_take_only_the_runs_asked_for(self, store: Store) -> None:
        now = utcnow()
        day = now.replace(hour=12, minute=0, second=0, microsecond=0)
        at = {"old": day - timedelta(days=30), "yesterday": day - timedelta(days=1), "today": day}
        runs = [make_run("acme", run_id=id_floor(at["old"])[:10] + "0" * 16, created_at=at["old"],
                         status=RunStatus.DELIVERED),
                make_run("acme", run_id=id_floor(at["yesterday"])[:10] + "0" * 16, created_at=at["yesterday"],
                         status=RunStatus.FAILED, source=Source(SourceKind.SFTP, "inbox/Orders-1.CSV", 12, "0" * 64)),
                make_run("globex", run_id=id_floor(at["today"])[:10] + "0" * 16, created_at=at["today"],
                         status=RunStatus.COMPLETED,
                         deliveries=(Delivery("x", "webhook:a", DeliveryStatus.FAILED, 3, "503"),))]
        runs[2] = replace(runs[2], deliveries=(replace(runs[2].deliveries[0], run_id=runs[2].run_id),))
        for run in runs:
            await store.insert_run(run)
        since = id_floor(day - timedelta(days=2))
        assert sorted(await store.run_counts(since)) == [("acme", "failed", 1), ("globex", "completed", 1)]
        first = (day - timedelta(days=13)).replace(hour=0)
        per_day = await store.runs_per_day(first, 14)
        assert sorted(per_day) == sorted([(at["yesterday"].strftime("%Y-%m-%d"), "failed", 1),
                                          (at["today"].strftime("%Y-%m-%d"), "completed", 1)])
        assert await store.runs_per_day(first, 14, "globex") == [(at["today"].strftime("%Y-%m-%d"), "completed", 1)]
        assert await store.failing_deliveries(since) == {"globex": 1}
        assert await store.count_by_connection(RunStatus.DELIVERED) == {"acme": 1}
        last = await store.last_arrivals(["acme", "globex", "nobody"])
        assert set(last) == {"acme", "globex"} and last["acme"] == at["yesterday"]
        found, _ = await store.list_runs(RunQuery(since_id=id_floor(at["yesterday"] - timedelta(hours=1)),
                                                  until_id=id_floor(at["yesterday"] + timedelta(hours=1)),
                                                  name="orders-1"))
        assert [r.run_id for r in found] == [runs[1].run_id]

    async def test_a_review_decision_writes_its_audit_entry_with_the_run_or_not_at_all(self, store: Store) -> None:
        run = make_run(status=RunStatus.NEEDS_REVIEW)
        await store.insert_run(run)
        failed = replace(run, status=RunStatus.FAILED, finished_at=utcnow())
        entry = AuditEntry("ops", AuditAction.REJECT, "run", run.run_id, {"status": "needs_review"},
                           {"status": "failed"})
        event = Event(new_id(), "http://a/hook", "run.failed", "{}")
        # A run decided meanwhile is not written, and neither is the losing decision's audit entry.
        assert not await store.update_run(failed, expect=RunStatus.QUEUED, events=[event], audit=entry)
        assert (await store.list_audit())[0] == []
        assert await store.update_run(failed, expect=RunStatus.NEEDS_REVIEW, events=[event], audit=entry)
        entries, _ = await store.list_audit()
        assert entries == [entry]
        assert await store.events_of("run.failed") == [event]
        got = await store.get_run(run.run_id)
        assert got is not None and got.status is RunStatus.FAILED

    async def test_console_sessions_are_found_by_their_hash_until_they_expire_or_end(self, store: Store) -> None:
        now = utcnow().replace(microsecond=0)  # a whole second: the stored text must still compare as the time
        alive = OperatorSession("a" * 64, "ann", "admin", "tag1", now, now + timedelta(hours=1))
        # Given in another time zone: compared as the time it is, not as it is written.
        other = timezone(timedelta(hours=2))
        soon = OperatorSession("b" * 64, "bob", "viewer", "tag2", now.astimezone(other),
                               (now + timedelta(seconds=30)).astimezone(other))
        gone = OperatorSession("c" * 64, "cid", "viewer", "tag3", now - timedelta(hours=2), now - timedelta(hours=1))
        for session in (alive, soon, gone):
            await store.save_session(session)
        assert await store.get_session(alive.token_hash, now) == alive
        got = await store.get_session(soon.token_hash, now)
        assert got == soon and got.expires_at == soon.expires_at
        assert await store.get_session(gone.token_hash, now) is None, "an expired session was found"
        assert await store.get_session("d" * 64, now) is None
        # Expiry is strict: at its expiry time a session is over.
        assert await store.get_session(soon.token_hash, soon.expires_at) is None
        assert await store.get_session(soon.token_hash, soon.expires_at - timedelta(microseconds=1)) == soon

        assert await store.delete_expired_sessions(now) == 1
        assert await store.delete_expired_sessions(now) == 0
        assert await store.get_session(alive.token_hash, now) == alive  # the live ones are kept
        assert await store.delete_session(alive.token_hash)
        assert not await store.delete_session(alive.token_hash)
        assert await store.get_session(alive.token_hash, now) is None
        assert await store.delete_expired_sessions(soon.expires_at) == 1
        assert await store.get_session(soon.token_hash, now) is None


    # Several nodes: claims, heartbeats, taking over

    async def test_a_claimed_run_is_finished_only_by_its_owner_and_a_dead_owner_s_runs_go_back(
            self, store: Store) -> None:
        now = utcnow()
        for node in ("a", "b"):
            await store.join(Node(node, now, now, {"host": "h"}))
        run = make_run()
        await store.insert_run(run)
        claim = replace(run, status=RunStatus.PROCESSING, started_at=now)
        assert await store.update_run(claim, expect=RunStatus.QUEUED, owner="a")
        assert not await store.update_run(claim, expect=RunStatus.QUEUED, owner="b")  # one claim wins
        [a, b] = await store.nodes()
        assert (a.node_id, a.runs, b.runs, a.info) == ("a", (run.run_id,), (), {"host": "h"})
        done = replace(claim, status=RunStatus.COMPLETED, finished_at=now)
        assert not await store.update_run(done, expect=RunStatus.PROCESSING, owner="b")  # not b's to finish
        # a stops beating; b, alive, takes over: the run is queued again, a is forgotten
        assert await store.heartbeat("b", now + timedelta(seconds=60))
        taken = await store.take_over(now + timedelta(seconds=30), by="b")
        assert [(t.node_id, t.runs) for t in taken] == [("a", (run.run_id,))]
        got = await store.get_run(run.run_id)
        assert got is not None and got.status is RunStatus.QUEUED and got.started_at is None
        assert [n.node_id for n in await store.nodes()] == ["b"]
        assert not await store.heartbeat("a", now + timedelta(seconds=61))  # a learns it was taken for dead
        # a's late outcome is refused; b claims the run again and finishes it
        assert not await store.update_run(done, expect=RunStatus.PROCESSING, owner="a")
        assert await store.update_run(claim, expect=RunStatus.QUEUED, owner="b")
        assert await store.update_run(done, expect=RunStatus.PROCESSING, owner="b")
        assert (await store.nodes())[0].runs == ()  # a finished run is nobody's
        assert await store.take_over(now + timedelta(seconds=30), by="b") == []

    async def test_leaving_gives_the_work_back_and_runs_of_no_known_node_are_orphans(self, store: Store) -> None:
        now = utcnow()
        await store.join(Node("a", now, now))
        mine, orphan = make_run(), make_run()
        for run in (mine, orphan):
            await store.insert_run(run)
        assert await store.update_run(replace(mine, status=RunStatus.PROCESSING), expect=RunStatus.QUEUED, owner="a")
        # written by a process from before nodes were recorded: processing, nobody's
        assert await store.update_run(replace(orphan, status=RunStatus.PROCESSING), expect=RunStatus.QUEUED)
        [taken] = await store.take_over(now - timedelta(seconds=30), by="a")
        assert (taken.node_id, taken.runs) == ("", (orphan.run_id,))
        given = await store.leave("a")
        assert given.runs == (mine.run_id,) and await store.nodes() == []
        assert {r.status for r in (await store.list_runs(RunQuery()))[0]} == {RunStatus.QUEUED}

    async def test_deliveries_and_events_are_claimed_by_one_node_and_saved_only_by_it(self, store: Store) -> None:
        now = utcnow()
        for node in ("a", "b"):
            await store.join(Node(node, now, now))
        run = make_run(status=RunStatus.COMPLETED)
        run = replace(run, deliveries=(Delivery(run.run_id, "d1", next_attempt_at=now),
                                       Delivery(run.run_id, "d2", next_attempt_at=now + timedelta(hours=1))))
        event = Event("e1", "http://127.0.0.1:9/hook", "run.completed", "{}", created_at=now)
        await store.insert_run(run, events=[event])
        later = now + timedelta(seconds=1)
        [d1] = await store.due_deliveries(later, owner="a")
        assert d1.destination == "d1"
        assert await store.due_deliveries(later, owner="b") == []  # a holds it
        assert [d.destination for d in await store.due_deliveries(later, owner="a")] == ["d1"]  # still a's
        [e1] = await store.due_events(later, owner="a")
        assert await store.due_events(later, owner="b") == []
        assert await store.next_due(owner="b") == now + timedelta(hours=1)  # what a holds is not b's to wait on
        assert [n.deliveries for n in await store.nodes()] == [1, 0]
        # a dies; b takes over and claims both
        taken = await store.take_over(later + timedelta(seconds=1), by="b")
        assert [(t.node_id, t.deliveries, t.events) for t in taken] == [("a", 1, 1)]
        assert [d.destination for d in await store.due_deliveries(later, owner="b")] == ["d1"]
        assert len(await store.due_events(later, owner="b")) == 1
        sent = replace(d1, status=DeliveryStatus.DELIVERED, attempts=1, delivered_at=later, next_attempt_at=None)
        assert not await store.save_delivery(sent, owner="a")  # a's late word is refused
        assert not await store.save_event(replace(e1, status=DeliveryStatus.DELIVERED, attempts=1), owner="a")
        assert await store.save_delivery(sent, owner="b")
        assert await store.save_event(replace(e1, status=DeliveryStatus.DELIVERED, attempts=1), owner="b")
        got = await store.get_run(run.run_id)
        assert got is not None and got.deliveries[0].status is DeliveryStatus.DELIVERED
        assert [n.deliveries for n in await store.nodes()] == [0]
        assert (await store.events_of())[0].status is DeliveryStatus.DELIVERED

    async def test_nodes_claiming_at_once_never_get_the_same_delivery(self, store: Store) -> None:
        now = utcnow()
        runs = []
        for _ in range(20):
            run = make_run(status=RunStatus.COMPLETED)
            runs.append(replace(run, deliveries=(Delivery(run.run_id, "d", next_attempt_at=now),)))
        for run in runs:
            await store.insert_run(run)
        got = await asyncio.gather(*(store.due_deliveries(now, limit=7, owner=f"n{i}") for i in range(4)))
        claimed = [d.run_id for batch in got for d in batch]
        assert len(claimed) == len(set(claimed)) == 20

    # Several nodes share uploads: each test below races two Store instances opened on one database (`twin`).

    async def test_parts_of_one_upload_recorded_at_once_are_all_kept(self, store: Store, twin: Store) -> None:
        upload = Upload(new_id(), SourceKind.UPLOAD, UploadState.INITIATED, "acme", "acme-out", total_parts=40)
        await store.save_upload(upload)
        saved = await asyncio.gather(*((store, twin)[n % 2].save_part(upload.upload_id, n, f"e{n}", n)
                                       for n in range(1, 41)))
        assert all(saved)
        got = await twin.get_upload(upload.upload_id)
        assert got is not None and got.state is UploadState.UPLOADING
        assert got.parts == {n: f"e{n}" for n in range(1, 41)}
        assert got.part_records == {n: n for n in range(1, 41)} and got.records == sum(range(1, 41))
        assert await store.save_part(upload.upload_id, 3, "again", 7)  # sent again: replaced
        got = await store.get_upload(upload.upload_id)
        assert got is not None and got.parts[3] == "again" and got.records == sum(range(1, 41)) - 3 + 7
        assert not await store.save_part("missing", 1, "e", 1)

    async def test_no_part_is_recorded_once_a_complete_has_begun_or_the_upload_is_closed(self, store: Store) -> None:
        upload = Upload(new_id(), SourceKind.UPLOAD, UploadState.INITIATED, "acme", "acme-out", total_parts=2)
        await store.save_upload(upload)
        assert await store.save_part(upload.upload_id, 1, "e1", 1)
        read = await store.get_upload(upload.upload_id)
        assert read is not None
        assert await store.save_upload(replace(read, run_id="R1"), expect=read)
        assert not await store.save_part(upload.upload_id, 2, "e2", 1)
        got = await store.get_upload(upload.upload_id)
        assert got is not None and got.parts == {1: "e1"}
        closed = Upload(new_id(), SourceKind.UPLOAD, UploadState.ABORTED, "acme", "acme-out", total_parts=1)
        await store.save_upload(closed)
        assert not await store.save_part(closed.upload_id, 1, "e1", 1)

    async def test_two_writers_of_what_they_both_read_one_wins(self, store: Store, twin: Store) -> None:
        upload = Upload(new_id(), SourceKind.UPLOAD, UploadState.UPLOADING, "acme", "acme-out", total_parts=1)
        await store.save_upload(upload)
        read = await store.get_upload(upload.upload_id)
        assert read is not None
        won = await asyncio.gather(store.save_upload(replace(read, run_id="A"), expect=read),
                                   twin.save_upload(replace(read, run_id="B"), expect=read))
        assert sorted(won) == [False, True]
        got = await store.get_upload(upload.upload_id)
        assert got is not None and got.run_id == ("A" if won[0] else "B")
        # an offset moved on since it was read: the write of the one who read the old one is refused
        tus = Upload("t" * 32, SourceKind.TUS, UploadState.UPLOADING, "acme", "acme-in", length=10, offset=4)
        await store.save_upload(tus)
        assert await twin.save_upload(replace(tus, offset=6), expect=tus)
        assert not await store.save_upload(replace(tus, offset=8), expect=tus)
        got = await store.get_upload(tus.upload_id)
        assert got is not None and got.offset == 6
        # a part recorded since it was read: the upload changed, its writer must read it again
        read = await store.get_upload(upload.upload_id)
        assert read is not None and read.run_id is not None
        later = replace(read, run_id=None, updated_at=read.updated_at + timedelta(seconds=1))
        assert await store.save_upload(later, expect=read)
        assert await twin.save_part(upload.upload_id, 1, "e1", 1)
        assert not await store.save_upload(replace(later, state=UploadState.ABORTED), expect=later)

    async def test_an_upload_is_held_by_one_holder_until_let_go_or_its_time_is_up(self, store: Store,
                                                                                 twin: Store) -> None:
        tus = Upload("a" * 32, SourceKind.TUS, UploadState.INITIATED, "acme", "acme-in", length=10)
        await store.save_upload(tus)
        held = await asyncio.gather(store.claim_upload(tus.upload_id, "one", 60),
                                    twin.claim_upload(tus.upload_id, "two", 60))
        [mine] = [u for u in held if u is not None]
        holder, other = ("one", twin) if held[0] is not None else ("two", store)
        assert mine.holder == holder and mine.offset == 0
        assert await other.claim_upload(tus.upload_id, "three", 60) is None
        again = await store.claim_upload(tus.upload_id, holder, 60)  # the holder, again: still its own
        assert again is not None and again.holder == holder
        # its write moves the offset and lets go in one step; then another can hold it
        assert await store.save_upload(replace(again, offset=5, holder=None), expect=again)
        taken = await other.claim_upload(tus.upload_id, "three", 0.3)
        assert taken is not None and taken.offset == 5 and taken.holder == "three"
        assert not await store.save_upload(replace(again, offset=9), expect=again)  # let go of: no more its own
        # a holder that never lets go (its node died) loses the upload when its time is up
        assert await store.claim_upload(tus.upload_id, "four", 60) is None

        async def four() -> Upload | None:
            return await store.claim_upload(tus.upload_id, "four", 60)

        fourth = await eventually(four, what="held after the holder's time was up")
        assert fourth.holder == "four"
        assert await twin.claim_upload("missing", "four", 60) is None
        # a node that starts again lets go of what its previous life held, and only that
        other_tus = Upload("b" * 32, SourceKind.TUS, UploadState.INITIATED, "acme", "acme-in", length=10)
        await store.save_upload(other_tus)
        assert await store.save_upload(replace(fourth, holder=None), expect=fourth)
        assert await store.claim_upload(tus.upload_id, "host-a/1", 60) is not None
        assert await store.claim_upload(other_tus.upload_id, "host-b/1", 60) is not None
        assert await twin.release_uploads("host-a/") == 1
        assert await twin.claim_upload(tus.upload_id, "host-b/2", 60) is not None
        assert await twin.claim_upload(other_tus.upload_id, "host-a/2", 60) is None

    async def test_the_first_run_of_a_content_is_recorded_once(self, store: Store, twin: Store) -> None:
        one, two = make_run(sha="c" * 64), make_run(sha="c" * 64)
        outcomes = await asyncio.gather(store.insert_run(one, first_of_content=True),
                                        twin.insert_run(two, first_of_content=True), return_exceptions=True)
        [error] = [e for e in outcomes if e is not None]
        first, second = (one, two) if outcomes[0] is None else (two, one)
        assert isinstance(error, DuplicateContentError) and error.original == first.run_id
        assert await store.get_run(second.run_id) is None  # nothing of it was written
        assert await store.originals({("acme", "c" * 64)}) == {("acme", "c" * 64): first.run_id}
        await twin.insert_run(replace(second, duplicate_of=first.run_id, status=RunStatus.FAILED))
        # Not required to be the first (a run that does not check for duplicates): recorded all the same,
        # and the original stays the earliest of those that are not duplicates.
        later = make_run(sha="c" * 64)
        await store.insert_run(later)
        earlier = make_run(sha="d" * 64)
        await store.insert_run(make_run(sha="d" * 64))
        await twin.insert_run(earlier)
        assert await twin.originals({("acme", "c" * 64), ("acme", "d" * 64)}) == {
            ("acme", "c" * 64): first.run_id, ("acme", "d" * 64): earlier.run_id}

    # --- bans and bytes used, shared by the nodes of one store ---

    async def test_failures_within_the_window_ban_an_address_until_a_wall_clock_time(self, store: Store) -> None:
        now = utcnow()
        policy = {"after": 3, "within": 60.0, "duration": 900.0}
        assert await store.login_failed("10.0.0.1", now - timedelta(seconds=120), **policy) is None  # too old
        assert await store.login_failed("10.0.0.1", now - timedelta(seconds=10), **policy) is None
        assert await store.login_failed("10.0.0.2", now, **policy) is None  # another address counts apart
        assert await store.login_failed("10.0.0.1", now - timedelta(seconds=5), **policy) is None
        assert await store.banned_until("10.0.0.1", now) is None
        until = await store.login_failed("10.0.0.1", now, **policy)
        assert until == now + timedelta(seconds=900)
        assert await store.banned_until("10.0.0.1", now) == until
        assert await store.banned_until("10.0.0.1", until) is None  # over at its time
        assert await store.banned_until("10.0.0.2", now) is None
        # The failures that led to it are forgotten: the next ones count from zero.
        later = until + timedelta(seconds=1)
        assert await store.login_failed("10.0.0.1", later, **policy) is None
        assert await store.login_failed("10.0.0.1", later, **policy) is None
        assert await store.banned_until("10.0.0.1", later) is None

    async def test_failures_recorded_at_once_all_count(self, store: Store) -> None:
        now = utcnow()
        outcomes = await asyncio.gather(*(store.login_failed("10.0.0.9", now, after=5, within=60.0, duration=60.0)
                                          for _ in range(5)))
        assert sum(until is not None for until in outcomes) == 1
        assert await store.banned_until("10.0.0.9", now) is not None

    async def test_ban_changes_come_after_a_mark_and_an_unban_is_one_of_them(self, store: Store) -> None:
        now = utcnow()
        assert await store.ban_changes(0) == ({}, 0)
        await store.login_failed("10.0.0.3", now, after=2, within=60.0, duration=60.0)  # a failure: no change
        assert (await store.ban_changes(0))[0] == {}
        a = await store.login_failed("10.0.0.4", now, after=1, within=60.0, duration=60.0)
        b = await store.login_failed("10.0.0.5", now, after=1, within=60.0, duration=30.0)
        changes, mark = await store.ban_changes(0)
        assert changes == {"10.0.0.4": a, "10.0.0.5": b}
        assert await store.ban_changes(mark) == ({}, mark)
        assert await store.unban("10.0.0.4", now) is True
        assert await store.unban("10.0.0.4", now) is False  # not banned any more
        assert await store.unban("10.0.0.99", now) is False  # never seen
        assert await store.banned_until("10.0.0.4", now) is None
        changes, after = await store.ban_changes(mark)
        assert changes == {"10.0.0.4": None} and after > mark
        # An unban forgets the failures too.
        assert await store.login_failed("10.0.0.3", now, after=3, within=60.0, duration=60.0) is None  # its 2nd
        assert await store.unban("10.0.0.3", now) is False
        assert await store.login_failed("10.0.0.3", now, after=2, within=60.0, duration=60.0) is None  # 1st again

    async def test_space_use_adds_deltas_atomically_and_a_recount_sets_it(self, store: Store) -> None:
        assert await store.space_use() == {}
        assert await store.add_space_use({"acme": 100, "globex": 5}) == {"acme": 100, "globex": 5}
        await asyncio.gather(*(store.add_space_use({"acme": 10}) for _ in range(10)))
        assert await store.add_space_use({"globex": -50}) == {"acme": 200, "globex": 0}  # never below 0
        await store.set_space_use("acme", 42)
        assert await store.space_use() == {"acme": 42, "globex": 0}
        assert await store.add_space_use({"acme": -2, "initech": -3}) == {"acme": 40, "globex": 0, "initech": 0}


def _fields(value: object) -> dict[str, object]:
    return {f: getattr(value, f) for f in value.__dataclass_fields__}  # type: ignore[attr-defined]

