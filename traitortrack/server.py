"""Hypercorn workers that stop gracefully.

Hypercorn's own runner gives the app no sign that a stop has begun: open websockets (wall
displays never close theirs) would hold every stop for the full ``graceful_timeout`` and then
drop. This runner spawns the same workers on the same shared sockets, but when told to stop
each worker first drains its hub: in-flight scans finish and are acked, then every websocket
is closed with 1012 (service restart) so clients reconnect (to another worker) and resume.
"""

import asyncio
import gc
import logging
import multiprocessing
import signal
import time
from multiprocessing.connection import wait
from multiprocessing.synchronize import Event as EventType
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.protocol import ws_stream
from hypercorn.utils import wrap_app
from wsproto.extensions import PerMessageDeflate

from traitortrack.monitoring import multiprocess

log = logging.getLogger(__name__)

STOP_POLL_S = 0.1
RESTART_BACKOFF_S = 1.0
GC_YOUNG_THRESHOLD = 10_000  # Python's default is 700 allocations


class _NoCompression(PerMessageDeflate):
    """Declines permessage-deflate, which every browser offers and Hypercorn always accepts
    (it has no setting: pgjones/hypercorn#307). Compression is per socket: each wall would
    keep a zlib stream of its own (hundreds of KB) and deflate every frame on its own, where
    the hub sends one encoded frame to all of them."""

    def accept(self, offer: str) -> None:
        return None


def _worker(config: Config, sockets: Sockets, stop: EventType) -> None:
    from traitortrack import create_app
    from traitortrack.runtime import drain

    ws_stream.PerMessageDeflate = _NoCompression  # type: ignore[misc]
    app = create_app()
    _route_hypercorn_logs_through_ours(config)

    async def stopping() -> None:
        _settle_garbage_collection()  # Hypercorn awaits this once the app has started
        # A signal sent to the whole process group (Ctrl-C, a container stop) reaches the
        # workers too: treat it as the request to drain, not as a reason to die mid-scan.
        loop = asyncio.get_running_loop()
        for name in ("SIGINT", "SIGTERM"):
            loop.add_signal_handler(getattr(signal, name), stop.set)
        # A multiprocessing event cannot be awaited; polling it is what Hypercorn does too.
        while not stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(STOP_POLL_S)
        await drain(app, config.graceful_timeout)

    main = worker_serve(
        wrap_app(app, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=sockets,
        shutdown_trigger=stopping,
    )
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


def _settle_garbage_collection() -> None:
    """A full collection walks every tracked object: with a thousand sockets open it stopped a
    worker for 100-180 ms (measured), which walls and scanners saw as latency. What exists once
    the app has started (modules, pools, caches) lives as long as the worker: freeze it out of
    the collector's walks, and collect the young generation less often (fewer objects survive
    into the older ones, so full collections come more rarely)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _route_hypercorn_logs_through_ours(config: Config) -> None:
    """Hypercorn gives its loggers stream handlers of their own; drop them so its lines come
    out once, in our structured format."""
    _ = config.log  # creates Hypercorn's loggers and handlers
    for name in ("hypercorn.error", "hypercorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def run(config: Config) -> int:
    """Serve with ``config.workers`` processes until SIGINT/SIGTERM; restart crashed ones."""
    # Before any worker starts: they find the metrics folder in their environment.
    metrics_dir, made_metrics_dir = multiprocess.prepare()
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    sockets = config.create_sockets()
    processes: list[Any] = []

    def start_worker() -> None:
        process = context.Process(
            target=_worker, kwargs={"config": config, "sockets": sockets, "stop": stop}
        )
        process.start()
        processes.append(process)

    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), lambda *_: stop.set())
    for _ in range(config.workers):
        start_worker()
    exit_code = 0
    while not stop.is_set():
        wait([p.sentinel for p in processes], timeout=1)
        for process in [p for p in processes if p.exitcode is not None]:
            processes.remove(process)
            multiprocess.worker_died(process.pid)
            if not stop.is_set():
                log.error("worker died; starting another", extra={"exit_code": process.exitcode})
                exit_code = process.exitcode or 1
                time.sleep(RESTART_BACKOFF_S)
                start_worker()
    for process in processes:
        process.join(config.graceful_timeout + 5)
        if process.exitcode is None:
            process.terminate()
    for sock in sockets.insecure_sockets + sockets.secure_sockets:
        sock.close()
    if made_metrics_dir:
        multiprocess.remove(metrics_dir)
    return exit_code if stop.is_set() and exit_code == 0 else 0
