"""Hypercorn workers that stop gracefully.

Hypercorn's own runner gives the app no sign that a stop has begun: open websockets (wall
displays never close theirs) would hold every stop for the full ``graceful_timeout`` and then
drop. This runner spawns the same workers, each on a listening socket of its own (see
``listening_sockets``), and when told to stop each worker first drains its hub: in-flight
scans finish and are acked, then every websocket is closed with 1012 (service restart) so
clients reconnect (to another worker) and resume.
"""

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.synchronize import Event as EventType
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

from traitortrack import lean
from traitortrack.monitoring import multiprocess

log = logging.getLogger(__name__)

STOP_POLL_S = 0.1
RESTART_BACKOFF_S = 1.0
GC_YOUNG_THRESHOLD = 10_000  # Python's default is 700 allocations
RELEASE_MEMORY_EVERY_S = 60.0


def _worker(config: Config, sockets: Sockets, stop: EventType) -> None:
    from traitortrack import create_app
    from traitortrack.runtime import drain

    lean.install()
    app = create_app()
    _route_hypercorn_logs_through_ours(config)

    async def stopping() -> None:
        _settle_garbage_collection()  # Hypercorn awaits this once the app has started
        # A signal sent to the whole process group (Ctrl-C, a container stop) reaches the
        # workers too: treat it as the request to drain, not as a reason to die mid-scan.
        loop = asyncio.get_running_loop()
        for name in ("SIGINT", "SIGTERM"):
            loop.add_signal_handler(getattr(signal, name), stop.set)
        release = free_memory_releaser()
        released_at = loop.time()
        # A multiprocessing event cannot be awaited; polling it is what Hypercorn does too.
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_S)
            if release is not None and loop.time() - released_at >= RELEASE_MEMORY_EVERY_S:
                released_at = loop.time()
                release()
        # Hypercorn closes the listening sockets as soon as this returns, then waits up to
        # graceful_timeout for the connections to end: the drain goes on meanwhile.
        drain(app)

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


def free_memory_releaser() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None elsewhere. glibc keeps memory that was freed in the
    middle of its heap for reuse, and a worker's heap is a patchwork of sockets, frames and
    query results of every size: its RSS crept up by about a MB every ten minutes of a soak
    while Python's own objects stayed flat (tracemalloc). Trimming every minute hands whole free
    pages back to the system, in a millisecond or two."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    return None if trim is None else lambda: trim(0)


def _route_hypercorn_logs_through_ours(config: Config) -> None:
    """Hypercorn gives its loggers stream handlers of their own; drop them so its lines come
    out once, in our structured format."""
    _ = config.log  # creates Hypercorn's loggers and handlers
    for name in ("hypercorn.error", "hypercorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def listening_sockets(config: Config) -> list[Sockets]:
    """A set of sockets for each of ``config.workers``, bound to the same addresses.

    Workers sharing one listening socket all wake on a new connection and the first to run
    accepts the whole burst waiting (measured: 39 of 41 new websockets on one of two workers).
    With a socket of its own per worker (SO_REUSEPORT) the kernel spreads connections over them
    by a hash of the client's address.

    A worker starts listening on its socket once its app has started (Hypercorn does), not
    before: connections that a starting server would queue unanswered for seconds (while its
    workers start) go to the sockets already listening on the port, such as the old server's in
    a deploy, or are refused at once if there are none (clients retry). Once it listens the
    runner keeps the socket open and listening until the stop: a connection made while a worker
    restarts waits in its socket's queue for the new worker. Unix sockets and inherited
    descriptors (``fd://``) cannot be doubled and stay shared.
    """
    first = config.create_sockets()
    return [first] + [
        Sockets([_twin(s) for s in first.secure_sockets],
                [_twin(s) for s in first.insecure_sockets], first.quic_sockets)
        for _ in range(1, config.workers)
    ]  # fmt: skip


def _twin(sock: socket.socket) -> socket.socket:
    """Another socket on ``sock``'s address, or ``sock`` itself where that cannot be."""
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is None or not sock.getsockopt(socket.SOL_SOCKET, reuse_port):
        return sock  # Hypercorn sets SO_REUSEPORT on the TCP addresses it binds itself
    twin = socket.socket(sock.family, sock.type)
    twin.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    twin.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
    twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    twin.bind(sock.getsockname())  # the port actually bound, also when asked for port 0
    twin.setblocking(False)
    twin.set_inheritable(True)
    return twin


def _unique(sets: list[Sockets]) -> list[socket.socket]:
    found: dict[int, socket.socket] = {}
    for group in sets:
        for sock in group.secure_sockets + group.insecure_sockets:
            found[id(sock)] = sock
    return list(found.values())


def run(config: Config) -> int:
    """Serve with ``config.workers`` processes until SIGINT/SIGTERM; restart crashed ones."""
    # Before any worker starts: they find the metrics folder in their environment.
    metrics_dir, made_metrics_dir = multiprocess.prepare()
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    socket_sets = listening_sockets(config)
    processes: dict[int, Any] = {}  # worker slot -> its process; a slot keeps its sockets

    def start_worker(slot: int) -> None:
        process = context.Process(
            target=_worker, kwargs={"config": config, "sockets": socket_sets[slot], "stop": stop}
        )
        process.start()
        processes[slot] = process

    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), lambda *_: stop.set())
    for slot in range(config.workers):
        start_worker(slot)
    exit_code = 0
    while not stop.is_set():
        wait([p.sentinel for p in processes.values()], timeout=1)
        for slot, process in [(s, p) for s, p in processes.items() if p.exitcode is not None]:
            del processes[slot]
            multiprocess.worker_died(process.pid)
            if not stop.is_set():
                log.error("worker died; starting another", extra={"exit_code": process.exitcode})
                exit_code = process.exitcode or 1
                time.sleep(RESTART_BACKOFF_S)
                start_worker(slot)
    for process in processes.values():
        process.join(config.graceful_timeout + 5)
        if process.exitcode is None:
            process.terminate()
    for sock in _unique(socket_sets):
        sock.close()
    if made_metrics_dir:
        multiprocess.remove(metrics_dir)
    return exit_code if stop.is_set() and exit_code == 0 else 0
