"""/metrics and /healthz: no key needed, Prometheus text that a scraper parses, figures that move."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.http.conftest import Api
from tests.http.test_runs import drop, run_ids


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample by name and labels, but for `node` (each carries it: nodes behind a balancer stay apart)."""
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "node"))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def nodes(text: str) -> set[str | None]:
    return {s.labels.get("node") for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_move_with_real_work(api: Api) -> None:
    status, body = await api.call("GET", "/healthz", key=None)
    assert (status, body) == (200, {"status": "ok"})
    status, before_text = await api.call("GET", "/metrics", key=None)
    assert status == 200
    before = samples(before_text)
    await drop(api, "m.csv", "email\nann@example.org\nbad\n")
    await run_ids(api, 1)
    _, init = await api.call("POST", "/outbound/uploads", json={
        "connectionName": "demo", "pipelineId": "demo-orders-out", "totalParts": 1})
    status, text = await api.call("GET", "/metrics", key=None)
    after = samples(text)
    [node] = nodes(text)  # every sample names the node that answered, the same
    assert node and node.split(":")[1].isdigit()
    assert after[("feedd_runs", (("status", "completed"),))] == 1
    assert after[("feedd_open_uploads", ())] == 1
    assert after[("feedd_queue_depth", ())] == 0
    received = ("feedd_sftp_received_bytes_total", ())
    assert after[received] - before.get(received, 0) == len("email\nann@example.org\nbad\n")
    for outcome, n in (("valid", 1), ("invalid", 1)):
        key = ("feedd_rows_total", (("outcome", outcome),))
        assert after[key] - before.get(key, 0) == n
    count = ("feedd_processing_seconds_count", ())
    assert after[count] - before.get(count, 0) == 1
    assert ("feedd_sftp_sessions", ()) in after
    assert json.dumps(init)
