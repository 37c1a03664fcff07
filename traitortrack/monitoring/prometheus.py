"""The metrics ``/metrics`` serves, in Prometheus text format.

Several workers: ``traitortrack serve`` runs prometheus-client in multiprocess mode (see
``multiprocess``), so a scrape answered by any worker covers all of them. Counters and
histograms add up over every worker that ran since the server started (a restarted worker
never makes a counter go backwards); gauges are live sums (or max/min where a sum means
nothing) over the running workers. Without ``PROMETHEUS_MULTIPROC_DIR`` (tests, a bare
``hypercorn`` process) this process's own registry is served.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from traitortrack.monitoring.multiprocess import VARIABLE

CONTENT_TYPE = CONTENT_TYPE_LATEST

SCANS = Counter(
    "traitortrack_scans",
    "Scan and undo messages answered (websocket and HTTP), by kind and outcome.",
    ["kind", "outcome"],
)
ACK_LATENCY = Histogram(
    "traitortrack_ack_latency_seconds",
    "From a scan message reaching the server to its ack: the wait a scanner feels.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SCAN_BATCH = Histogram(
    "traitortrack_scan_batch_size",
    "Child scans committed together in one transaction (group commit), per transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
FANOUT_LAG = Histogram(
    "traitortrack_fanout_lag_seconds",
    "From an event's commit to a worker's hub handing it to its clients.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LIMIT_TRIPS = Counter(
    "traitortrack_limit_trips",
    "Scans or connections refused by an abuse limit (scan_rate, sockets), per worker summed.",
    ["limit"],
)
CLIENTS = Gauge(
    "traitortrack_clients",
    "Connected websocket clients, by role ('display' for wall-display links).",
    ["role"],
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "traitortrack_db_pool_size", "Pooled database connections.", multiprocess_mode="livesum"
)
POOL_CHECKED_OUT = Gauge(
    "traitortrack_db_pool_checked_out",
    "Database connections in use.",
    multiprocess_mode="livesum",
)
POOL_OVERFLOW = Gauge(
    "traitortrack_db_pool_overflow",
    "Connections open beyond the pool size.",
    multiprocess_mode="livesum",
)
POOL_CAPACITY = Gauge(
    "traitortrack_db_pool_capacity",
    "Most connections the pools may open (size + max overflow).",
    multiprocess_mode="livesum",
)
POOL_USAGE = Gauge(
    "traitortrack_db_pool_usage_ratio",
    "Busiest worker's share of its pool capacity in use (warn at 0.7, 0.85, 0.95).",
    multiprocess_mode="livemax",
)
SLOW_QUERIES = Counter(
    "traitortrack_slow_queries", "Statements slower than SLOW_QUERY_MS (see the slow-query log)."
)
BUS_RECONNECTS = Counter(
    "traitortrack_bus_reconnects", "Times a worker had to subscribe to the Redis event bus again."
)
BUS_UP = Gauge(
    "traitortrack_bus_up",
    "1 while every worker is subscribed to the event bus (always 1 in-process).",
    multiprocess_mode="livemin",
)
EVENT_POSITION = Gauge(
    "traitortrack_event_position",
    "Newest event id a worker has fanned out.",
    multiprocess_mode="livemax",
)
HTTP_RESPONSES = Counter(
    "traitortrack_http_responses", "HTTP responses, by status class.", ["status"]
)
ERRORS_LOGGED = Counter("traitortrack_errors_logged", "Log lines at level ERROR or above.")
DATABASE_SIZE = Gauge(
    "traitortrack_database_size_bytes", "Size of the database.", multiprocess_mode="livemax"
)
MEMORY = Gauge(
    "traitortrack_worker_resident_memory_bytes",
    "Resident memory of the workers.",
    multiprocess_mode="livesum",
)
CPU = Counter("traitortrack_worker_cpu_seconds", "CPU time used by the workers.")
WORKERS = Gauge("traitortrack_workers", "Running workers.", multiprocess_mode="livesum")


def exposition() -> bytes:
    """Every worker's metrics (or this process's, outside multiprocess mode)."""
    if os.environ.get(VARIABLE):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
