"""Values that cross layers: ids that sort by time, the run's JSON shape."""

from __future__ import annotations

import time

from feedd.model import Direction, Run, RunStatus, Source, SourceKind, iso, new_id


def test_ids_sort_by_creation_time_even_within_a_millisecond() -> None:
    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 for i in ids)
    before = new_id()
    time.sleep(0.002)
    assert new_id() > before


def test_run_json_is_camel_case_per_contract() -> None:
    run = Run(new_id(), "p", "acme", Direction.INBOUND, RunStatus.QUEUED,
              Source(SourceKind.SFTP, "inbox/a.csv", 3, "ab" * 32), "/spool/x")
    body = run.to_json()
    for key in ("runId", "pipeline", "connection", "direction", "status", "source", "counts", "mapping", "errors",
                "error", "deliveries", "createdAt", "startedAt", "finishedAt", "acknowledgedAt"):
        assert key in body
    assert body["source"] == {"kind": "sftp", "name": "inbox/a.csv", "size": 3, "sha256": "ab" * 32,
                              "receivedAt": iso(run.created_at)}
    assert body["swept"] == {"input": False, "outputs": False}
    assert body["counts"] == {"rows": 0, "valid": 0, "invalid": 0, "warned": 0}
    assert body["createdAt"].endswith("Z")
