"""Hypercorn workers that stop gracefully, and a runner that watches over them.

Hypercorn's own runner gives the app no sign that a stop has begun: open websockets (wall
displays never close theirs) would hold every stop for the full ``graceful_timeout`` and then
drop. This runner starts the same workers (forked: ``worker_modules``), each on a listening
socket of its own (``listening_sockets``), and stops them in this order (docs/reliability.md):

1. it closes its own copies of the listening sockets and sends each worker SIGTERM;
2. each worker closes its listening sockets and drains its hub: in-flight scans finish and
   are acked, then every websocket is closed with 1012 (service restart), so clients
   reconnect (to another worker, or a new server on the same port) and resume;
3. a worker still running ``graceful_timeout + shutdown_timeout + STOP_SLACK_S`` later is
   killed, and the runner exits non-zero.

A worker that dies is replaced, at once the first time, then after a growing delay; one that
keeps dying makes the runner give up (``Runner._reap``).
"""

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import multiprocessing
import pkgutil
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app
from quart import Quart

from traitortrack import lean
from traitortrack.monitoring import multiprocess

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0
MAX_RESTART_BACKOFF_S = 30.0
CRASH_WINDOW_S = 60.0  # crashes longer ago than this are forgotten
STOP_SLACK_S = 2.0  # a worker's exit after its own stop (its loop's and interpreter's end)
GC_YOUNG_THRESHOLD = 10_000  # Python's default is 700 allocations
RELEASE_MEMORY_EVERY_S = 60.0


def _worker(config: Config, sockets: Sockets) -> None:
    from traitortrack import create_app

    # Ctrl-C reaches the whole process group; the runner asks each worker with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lean.install()
    app = create_app()
    _route_hypercorn_logs_through_ours(config)
    main = _serve(app, config, sockets)
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


async def _serve(app: Quart, config: Config, sockets: Sockets) -> None:
    """Serve on ``sockets`` until SIGTERM, then stop gracefully."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=sockets,
        shutdown_trigger=functools.partial(_until_stopped, app, stop),
    )


async def _until_stopped(app: Quart, stop: asyncio.Event) -> None:
    """Hypercorn's shutdown trigger, awaited once the app has started.

    When it returns, Hypercorn closes the worker's listening sockets (a loop turn or two
    later), then waits up to ``graceful_timeout`` for the open connections to end; the drain
    begun here goes on meanwhile. (A socket accepted in those loop turns registers with a hub
    that is already draining, and is closed 1012 at once.)
    """
    from traitortrack.runtime import drain

    _settle_garbage_collection()
    release = free_memory_releaser()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RELEASE_MEMORY_EVERY_S)
        if release is not None and not stop.is_set():
            release()
    drain(app)


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


def run(config: Config, crash_limit: int) -> int:
    """Serve with ``config.workers`` processes until SIGINT/SIGTERM, restarting crashed ones
    (giving up when one crashed ``crash_limit`` times within ``CRASH_WINDOW_S``). Returns 0
    once every worker stopped as asked; 1 when one crashed, had to be killed, or kept crashing."""
    # Before any worker starts: they find the metrics folder in their environment.
    metrics_dir, made_metrics_dir = multiprocess.prepare()
    try:
        return Runner(config, crash_limit).serve()
    finally:
        if made_metrics_dir:  # every worker, its last writer, is gone by now
            multiprocess.remove(metrics_dir)


def worker_modules() -> list[str]:
    """What a worker imports before it serves. Workers are forked from a process that imported
    these once (multiprocessing's fork server), not started afresh: a new worker replacing one
    that died serves in the time its app takes to start, not that plus seconds of imports."""
    import traitortrack.web

    blueprints = [
        f"traitortrack.web.{m.name}" for m in pkgutil.iter_modules(traitortrack.web.__path__)
    ]
    return ["uvloop", "traitortrack.server", "traitortrack.runtime", *blueprints]


def restart_delay(crashes: int) -> float:
    """How long a slot waits for its next worker after its ``crashes``-th crash in a row: none
    after the first (a worker killed once, by the OOM killer say, leaves its share of new
    connections waiting in its socket's queue until the new one listens), then 1, 2, 4 ... s,
    so that a worker that cannot start does not spin."""
    if crashes <= 1:
        return 0.0
    return min(RESTART_BACKOFF_S * 2 ** (crashes - 2), MAX_RESTART_BACKOFF_S)


class Runner:
    """The workers of one ``serve``, each in a slot that keeps its listening sockets."""

    def __init__(self, config: Config, crash_limit: int) -> None:
        self.config = config
        self.crash_limit = crash_limit
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(worker_modules())
        self.socket_sets = listening_sockets(config)
        self.processes: dict[int, BaseProcess] = {}
        self.crashes: dict[int, list[float]] = {slot: [] for slot in range(config.workers)}
        self.restart_at: dict[int, float] = {}  # slot -> when its next worker starts
        self.stop_requested = False
        self.gave_up = False
        self.failed = False

    def serve(self) -> int:
        # A signal wakes the wait below (its handler alone would run only once the wait ends).
        wake, wake_signal = socket.socketpair()
        wake.setblocking(False)
        wake_signal.setblocking(False)
        signal.set_wakeup_fd(wake_signal.fileno())
        for name in ("SIGINT", "SIGTERM"):
            signal.signal(getattr(signal, name), self._request_stop)
        try:
            for slot in range(self.config.workers):
                self._start(slot)
            while True:
                wait([wake, *(p.sentinel for p in self.processes.values())], self._next_start_in())
                with contextlib.suppress(BlockingIOError):
                    wake.recv(512)
                if self.stop_requested:
                    break  # workers ending now were asked to (a signal to the process group)
                self._reap()
                if self.gave_up:
                    break
                self._start_due()
            self._stop()
        finally:
            signal.set_wakeup_fd(-1)
            wake.close()
            wake_signal.close()
        return 1 if self.failed else 0

    def _request_stop(self, *_: object) -> None:
        self.stop_requested = True

    def _start(self, slot: int) -> None:
        process = self.context.Process(
            target=_worker, kwargs={"config": self.config, "sockets": self.socket_sets[slot]}
        )
        process.start()
        self.processes[slot] = process

    def _next_start_in(self) -> float | None:
        if not self.restart_at:
            return None
        return max(0.0, min(self.restart_at.values()) - time.monotonic())

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in [s for s, at in self.restart_at.items() if at <= now]:
            del self.restart_at[slot]
            self._start(slot)

    def _reap(self) -> None:
        """Schedule a new worker for each one that died (``restart_delay``); give up when one
        slot's worker crashed ``crash_limit`` times within ``CRASH_WINDOW_S``."""
        now = time.monotonic()
        for slot, process in [(s, p) for s, p in self.processes.items() if p.exitcode is not None]:
            del self.processes[slot]
            multiprocess.worker_died(process.pid)
            self.failed = True
            crashes = [at for at in self.crashes[slot] if now - at < CRASH_WINDOW_S] + [now]
            self.crashes[slot] = crashes
            if len(crashes) >= self.crash_limit:
                log.critical(
                    "worker keeps crashing; giving up: stopping the server",
                    extra={"exit_code": process.exitcode, "crashes": len(crashes),
                           "within_s": CRASH_WINDOW_S},
                )  # fmt: skip
                self.gave_up = True
                continue
            delay = restart_delay(len(crashes))
            log.error(
                "worker died; starting another",
                extra={"exit_code": process.exitcode, "restart_in_s": delay},
            )
            self.restart_at[slot] = now + delay

    def _stop(self) -> None:
        """Stop listening, ask every worker to stop, and kill those still running after the
        grace that their own stop may take."""
        # First: with no socket left listening on its port in this server, the kernel hands
        # new connections to another server's (a new version's) or refuses them at once.
        # Connections still queued unaccepted in a socket as it closes are reset.
        for sock in _unique(self.socket_sets):
            sock.close()
        self.restart_at.clear()
        for process in self.processes.values():
            process.terminate()
        grace = self.config.graceful_timeout + self.config.shutdown_timeout + STOP_SLACK_S
        deadline = time.monotonic() + grace
        while (running := [p for p in self.processes.values() if p.exitcode is None]) and (
            left := deadline - time.monotonic()
        ) > 0:
            wait([p.sentinel for p in running], left)
        for process in self.processes.values():
            if process.exitcode is None:
                log.error("worker did not stop in time; killed", extra={"grace_s": grace})
                process.kill()
                self.failed = True
            elif process.exitcode not in (0, -signal.SIGTERM):  # SIGTERM: before it served
                log.error("worker failed to stop", extra={"exit_code": process.exitcode})
                self.failed = True
            process.join()
            multiprocess.worker_died(process.pid)
