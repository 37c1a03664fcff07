"""What Hypercorn keeps for each connection, made smaller (installed in each worker).

A worker holds thousands of idle wall displays for days, and each byte Hypercorn keeps per
connection is paid thousands of times. tracemalloc over 500 idle walls found about 4 KB of
each socket's 25 KB in empty ``collections.deque``s (760 bytes each, however empty): four in
the ``asyncio.Queue`` that carries the ASGI app's ``receive`` messages (its items, getters,
putters, and the event of ``join``, which Hypercorn never calls) and one in the
``asyncio.Event`` with which the HTTP/1.1 protocol pauses reading. ``AppQueue`` and
``LeanEvent`` do the same with a list, and make their waiters only while someone waits; the
stream protocol's deque of ``drain`` waiters becomes a list too (``LeanTCPServer``), and the
connection's read waits without a ``wait_for`` frame where there is no read timeout.

Once a websocket is accepted, its handshake is over, but Hypercorn keeps it for the socket's
life: the request's headers (cookie and all) in the scope, the parsed handshake, and the
HTTP/1.1 connection state. ``LeanWSStream`` lets go of them once the access log line is
written (about 3 KB a socket for our load generator's request; more for a browser's).

And permessage-deflate is declined, by one shared extension object (``NO_COMPRESSION``).

These reach under Hypercorn's public API (its connection, task group, websocket stream and
worker context), so ``install`` replaces them only on the Hypercorn release they were written
for (``MADE_FOR``, pinned in pyproject.toml) and where each is still where it was; otherwise
the worker logs ``hypercorn_internals_changed`` and runs with Hypercorn's own (correct, only
larger).
"""

import asyncio
import collections
import functools
import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from hypercorn.asyncio import run, tcp_server, worker_context
from hypercorn.asyncio.task_group import TaskGroup, _handle
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol import h11, ws_stream
from hypercorn.protocol.h11 import H11WSConnection
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.typing import (
    AppWrapper,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendEvent,
    Scope,
    WebsocketAcceptEvent,
)
from wsproto.extensions import PerMessageDeflate

log = logging.getLogger(__name__)

MADE_FOR = "0.18."  # the Hypercorn release series whose internals these replace


class NoCompression(PerMessageDeflate):
    """Declines permessage-deflate, which every browser offers and Hypercorn always accepts
    (it has no setting: pgjones/hypercorn#307). Compression is per socket: each wall would
    keep a zlib stream of its own (hundreds of KB) and deflate every frame on its own, where
    the hub sends one encoded frame to all of them."""

    def accept(self, offer: str) -> None:
        return None


# Declining keeps no state: one object serves every connection (one each was ~0.4 KB).
NO_COMPRESSION = NoCompression()


def _wake_first(waiters: list[asyncio.Future[None]] | None) -> None:
    for waiter in waiters or ():
        if not waiter.done():
            waiter.set_result(None)
            return


def _enlist(waiters: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    return waiter


async def _take_turn(waiters: list[asyncio.Future[None]]) -> None:
    """Wait among ``waiters`` until woken. One cancelled after it was woken (for an item, or
    for a free place) passes the wake-up on, so that nothing waits for what is already there."""
    waiter = _enlist(waiters)
    try:
        await waiter
    except asyncio.CancelledError:
        waiters.remove(waiter)
        _wake_first(waiters)
        raise
    waiters.remove(waiter)


class AppQueue:
    """A bounded FIFO of ASGI receive events: ``asyncio.Queue``'s ``get`` and ``put``.

    An app may instead take the events as they come (``consumer``): ``put`` then hands each to
    it on the server's reading task, and the app needs no task of its own waiting in ``get``.
    """

    __slots__ = ("_getters", "_items", "_maxsize", "_putters", "consumer")

    def __init__(self, maxsize: int) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._maxsize = maxsize  # 0 or less: unbounded
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None
        # Set only while the queue is empty (see ``wire.Socket.serve``), so order is kept.
        self.consumer: Callable[[ASGIReceiveEvent], Awaitable[None]] | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            if self._getters is None:
                self._getters = []
            await _take_turn(self._getters)
        _wake_first(self._putters)
        return self._items.pop(0)

    async def put(self, item: ASGIReceiveEvent) -> None:
        if self.consumer is not None:
            return await self.consumer(item)
        while 0 < self._maxsize <= len(self._items):
            if self._putters is None:
                self._putters = []
            await _take_turn(self._putters)
        self._items.append(item)
        _wake_first(self._getters)


class LeanEvent:
    """Hypercorn's event (its ``EventWrapper`` API) without a deque per instance."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    async def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        if self._waiters is None:
            self._waiters = []
        waiter = _enlist(self._waiters)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)

    async def set(self) -> None:
        self._set = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def is_set(self) -> bool:
        return self._set


class LeanTaskGroup(TaskGroup):
    """Hypercorn's per-connection task group, spawning the app with an ``AppQueue``."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        queue = AppQueue(config.max_app_queue_size)
        receive: ASGIReceiveCallable = queue.get
        self.spawn(_handle, app, config, scope, receive, send, *_spawners(self._loop))
        return queue.put


@functools.cache
def _spawners(loop: asyncio.AbstractEventLoop) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The ASGI extension callables Hypercorn gives an app (run in a thread; run on the loop
    from a thread): the same for every connection of a loop, so made once, not per socket."""

    def sync_spawn(func: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return loop.run_in_executor(None, func, *args)

    def call_soon(func: Callable[..., Any], *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(func(*args), loop).result()

    return sync_spawn, call_soon


class LeanTCPServer(TCPServer):
    """Hypercorn's connection, with a list for its stream's ``drain`` waiters (asyncio's
    stream protocol makes a deque each) and no ``wait_for`` frame around reads that have no
    timeout (the frame stays for as long as the socket is idle)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        protocol = getattr(self.writer, "_protocol", None)
        waiters = getattr(protocol, "_drain_waiters", None)
        # asyncio appends, removes and iterates: a list does all three.
        if isinstance(waiters, collections.deque) and not waiters:
            protocol._drain_waiters = []  # type: ignore[union-attr]

    async def _read_data(self) -> None:
        if self.config.read_timeout is not None:
            return await super()._read_data()
        while not self.reader.at_eof():
            try:
                data = await self.reader.read(MAX_RECV)
            except (ConnectionError, OSError):
                break
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())


class _Accepted:
    """What a stream's ``handshake`` is asked once the socket is open: only this."""

    accepted = True


_ACCEPTED = _Accepted()


class LeanWSStream(WSStream):
    """Hypercorn's websocket stream, keeping nothing of the handshake once it is accepted."""

    async def _accept(self, message: WebsocketAcceptEvent) -> None:
        await super()._accept(message)  # sends the 101 and writes the access log line
        if self.state != ASGIWebsocketState.CONNECTED:
            return
        self.scope["headers"] = []  # read in the handshake (Quart's request object), not after
        self.handshake = _ACCEPTED  # type: ignore[assignment]
        protocol = getattr(self.send, "__self__", None)
        connection = getattr(protocol, "connection", None)
        if isinstance(connection, H11WSConnection):
            # Used to send the 101 and error responses, which come before the upgrade; frames
            # after it go straight to the transport.
            connection.h11_connection = None  # type: ignore[assignment]


# What ``install`` replaces: (where, attribute, Hypercorn's, ours).
REPLACEMENTS: tuple[tuple[object, str, object, object], ...] = (
    (tcp_server, "TaskGroup", TaskGroup, LeanTaskGroup),
    (run, "TCPServer", TCPServer, LeanTCPServer),
    (h11, "WSStream", WSStream, LeanWSStream),
    (worker_context.WorkerContext, "event_class", worker_context.EventWrapper, LeanEvent),
)


def install() -> bool:
    """Put the lean pieces in Hypercorn's place (in a worker process, before it serves);
    False, logged, where this Hypercorn is not the one they were made for."""
    ws_stream.PerMessageDeflate = lambda: NO_COMPRESSION  # type: ignore[misc,assignment]
    if not version("hypercorn").startswith(MADE_FOR) or any(
        getattr(owner, name, None) not in (theirs, ours)
        for owner, name, theirs, ours in REPLACEMENTS
    ):
        log.warning(
            "hypercorn_internals_changed",
            extra={"hypercorn": version("hypercorn"), "made_for": MADE_FOR, "kept": "its own"},
        )
        return False
    for owner, name, _, ours in REPLACEMENTS:
        setattr(owner, name, ours)
    return True
