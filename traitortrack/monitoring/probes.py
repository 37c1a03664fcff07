"""What this worker process records as things happen: acks, responses, errors, slow queries.

Process-wide on purpose, like the Prometheus metrics they feed: a worker is one process, and
the scan path must not look anything up to record its latency.
"""

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from traitortrack.db.slow_queries import SlowQueryLog
from traitortrack.monitoring import prometheus
from traitortrack.monitoring.windows import CountWindow, LatencyWindow

acks = LatencyWindow()
scans = CountWindow()
requests = CountWindow()
server_errors = CountWindow()
errors_logged = CountWindow()
slow_queries = SlowQueryLog(on_slow=prometheus.SLOW_QUERIES.inc)


Perform = Callable[[Any, Any, dict[str, Any]], Awaitable[dict[str, Any]]]


def timed(perform: Perform) -> Perform:
    """Measure every scan message's answer: outcome, and the time from arrival to ack."""

    @functools.wraps(perform)
    async def timed_perform(engine: Any, actor: Any, message: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        ack = await perform(engine, actor, message)
        scan_answered(message, ack, time.perf_counter() - started)
        return ack

    return timed_perform


def scan_answered(message: dict[str, Any], ack: dict[str, Any], seconds: float) -> None:
    kind = message.get("as") if message.get("type") == "scan" else message.get("type")
    kind = kind if kind in {"parent", "child", "undo", "finish"} else "other"
    prometheus.SCANS.labels(kind, str(ack.get("outcome"))).inc()
    prometheus.ACK_LATENCY.observe(seconds)
    acks.observe(seconds * 1000)
    scans.add()


def response_sent(status: int) -> None:
    prometheus.HTTP_RESPONSES.labels(f"{status // 100}xx").inc()
    requests.add()
    if status >= 500:
        server_errors.add()


class ErrorCounter(logging.Handler):
    """Counts log lines at ERROR and above (unhandled exceptions, failed background tasks)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        prometheus.ERRORS_LOGGED.inc()
        errors_logged.add()


error_counter = ErrorCounter()
