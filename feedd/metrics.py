"""Prometheus metrics (`/metrics`, README "Side API (HTTP)"): one registry for the daemon, counters bumped where things
happen, and the store-derived gauges (runs by status, queue depth, open uploads) refreshed at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from feedd.model import DeliveryStatus, RunStatus, UploadState

REGISTRY = CollectorRegistry()

RUNS = Gauge("feedd_runs", "Runs in the store, by status", ["status"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("feedd_queue_depth", "Runs waiting for a worker (queued)", registry=REGISTRY)
OPEN_UPLOADS = Gauge("feedd_open_uploads", "Outbound and tus uploads not yet completed or aborted",
                     registry=REGISTRY)
EVENTS = Gauge("feedd_events", "Webhook events in the store, by status (pending, delivered, failed)", ["status"],
               registry=REGISTRY)
ROWS = Counter("feedd_rows", "Rows processed, by outcome", ["outcome"], registry=REGISTRY)
SFTP_BYTES = Counter("feedd_sftp_received_bytes", "Bytes written by partners over SFTP", registry=REGISTRY)
SFTP_SESSIONS = Gauge("feedd_sftp_sessions", "Open SFTP sessions", registry=REGISTRY)
DELIVERY_ATTEMPTS = Counter("feedd_delivery_attempts", "Delivery attempts, by destination type", ["type"],
                            registry=REGISTRY)
DELIVERY_FAILURES = Counter("feedd_delivery_failures", "Failed delivery attempts, by destination type", ["type"],
                            registry=REGISTRY)
TASK_FAILING = Gauge("feedd_task_failing", "1 while a long-lived task keeps crashing (the daemon is unhealthy)",
                     ["task"], registry=REGISTRY)
TASK_RESTARTS = Counter("feedd_task_restarts", "Restarts of a long-lived task after it crashed", ["task"],
                        registry=REGISTRY)
PROCESSING_SECONDS = Histogram("feedd_processing_seconds", "Time a worker took to process one run",
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
                               registry=REGISTRY)
ARRIVALS_MISSED = Counter("feedd_arrivals_missed", "Expected files that did not arrive in their window, by pipeline",
                          ["pipeline"], registry=REGISTRY)
RETENTION_RECLAIMED = Counter("feedd_retention_reclaimed_bytes",
                              "Bytes deleted by retention sweeps, by part (inputs, outputs, outbox)", ["part"],
                              registry=REGISTRY)


def refresh(runs_by_status: dict[str, int], uploads_by_state: dict[str, int],
            events_by_status: dict[str, int] | None = None) -> None:
    for status in RunStatus:
        RUNS.labels(str(status)).set(runs_by_status.get(str(status), 0))
    QUEUE_DEPTH.set(runs_by_status.get(str(RunStatus.QUEUED), 0))
    for state in DeliveryStatus:
        EVENTS.labels(str(state)).set((events_by_status or {}).get(str(state), 0))
    OPEN_UPLOADS.set(sum(uploads_by_state.get(str(s), 0) for s in (UploadState.INITIATED, UploadState.UPLOADING)))


_NODE: list[str] = []  # the node this process is (see feedd.cluster), set once at start


def name_node(node_id: str) -> None:
    """Every sample rendered from now on carries `node="<node_id>"`: nodes behind one balancer scraped
    through it, or summed in one dashboard, stay apart."""
    _NODE[:] = [node_id]


class _Labelled:
    """REGISTRY as a collector whose samples carry the node's label too."""

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if _NODE:
                family.samples = [s._replace(labels={**s.labels, "node": _NODE[0]}) for s in family.samples]
            yield family


def render() -> bytes:
    return generate_latest(_Labelled())
