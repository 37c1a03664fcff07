"""A websocket's life under Quart, for as little memory and CPU as possible.

A worker holds thousands of idle wall displays, for days. Quart's own websocket connection
keeps, per socket, a receiving task, a handler task, an asyncio queue (four deques) and, for
the socket's whole life, the handshake's request object, contexts and session. Here Quart runs
the handshake only (the view checks the origin, the session, and accepts); the view then hands
the socket off (``hand_off``) and its life is served on the server's own task for the
connection, reading the server's ``receive`` directly, with nothing of the handshake kept.

Once it is live, a socket needs one task, not two (``Socket.serve``): its own sends the frames,
and what the client sends is handled where it is read. Under a worker's Hypercorn (with
``traitortrack.lean`` installed) that is the server's reading task for the connection, which
hands each message over instead of queueing it; elsewhere a reading task is started for it.

Frames: a wall display costs its worker a dozen frames a second, so the per-frame path decides
how many walls a worker keeps. Quart's ``websocket.send`` yields to the loop, re-checks the
handshake and fires a signal; under it Hypercorn builds events, frames the message with
wsproto and takes a lock per frame. Server frames are unmasked (RFC 6455 §5.1), so the bytes
of a frame are the same for every socket: here they are built once per frame (the hub sends
one ``str`` to all the walls of an audience) and written straight to the socket's stream.

That reaches one level under ASGI, into Hypercorn's HTTP/1.1 websocket stream; anywhere else
(the test client, HTTP/2, another server) frames go through the plain ASGI ``send``. Pings
(proxies cut idle sockets) are written there too, by one timer per worker (``Hub.ping_all``),
instead of Hypercorn's ping task per socket (``websocket_ping_interval``, off).
"""

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable, WebsocketScope
from quart import Quart, websocket
from quart.asgi import ASGIWebsocketConnection
from werkzeug.datastructures import Headers

from traitortrack.lean import AppQueue

SEND_TIMEOUT_S = 10.0
HIGH_WATER = 64 * 1024  # bytes buffered for a socket before a send waits for the client
SOCKET = "traitortrack.socket"  # the scope key of the websocket's ``Socket`` during its view
FrameSender = Callable[[str], Awaitable[None]]
PING_FRAME = bytes((0x89, 0))  # final, unmasked, no payload (RFC 6455 §5.5.2)
Lifetime = Callable[["Socket"], Awaitable[None]]
MessageHandler = Callable[[str | bytes], Awaitable[None]]


class Disconnected(asyncio.CancelledError):
    """The client went away: raised where its socket is read, as Quart cancelled the handler."""


class Socket(ASGIWebsocketConnection):
    """Quart's websocket connection, lean: no tasks or queue of its own, and a view that hands
    its socket off has it served once Quart's contexts and the request object are gone."""

    def __init__(self, app: Quart, scope: WebsocketScope) -> None:
        # Not Quart's: that makes the queue. Its websocket reads with ``queue.get``: here, the
        # server's ``receive`` on this task (see ``receive``).
        self.app, self.scope, self.queue = app, scope, self  # type: ignore[assignment]
        self._accepted = self._closed = False
        self.lifetime: Lifetime | None = None
        self._serving: asyncio.Task[None] | None = None  # the task in ``serve``
        self._ended: BaseException | None = None  # why ``serve`` was stopped from outside
        self._receive: ASGIReceiveCallable
        self._send: ASGISendCallable
        self._direct: _Direct | None

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        self._receive, self._send, self._direct = receive, send, _Direct.under(send)
        self.scope[SOCKET] = self  # type: ignore[typeddict-unknown-key]
        try:
            # Quart's: the view (the handshake), then its refusal if it refused.
            await self.handle_websocket(self._create_websocket_from_scope(send), send)
            del self.scope[SOCKET]  # type: ignore[misc]
            if (lifetime := self.lifetime) is None:
                return
            # Accepted here, not in the view: what the server starts on accepting (its ping
            # task) would copy the view's context, and keep the request object and session.
            self.lifetime = None
            await self.accept_connection(send, Headers(), None)
            await lifetime(self)
            if not self._closed:
                await self.close(1000)  # as Quart closes a socket whose handler returned
        except Disconnected:
            pass  # as Quart's cancelled handler ends

    async def receive(self) -> str | bytes:
        """The next message; ``Disconnected`` once the client has gone."""
        while True:
            event = await self._receive()
            if event["type"] == "websocket.receive":
                return _payload(event)
            if event["type"] == "websocket.disconnect":
                raise Disconnected

    get = receive  # Quart's websocket (during the view) reads with ``queue.get``

    async def serve(self, on_message: MessageHandler, sending: Coroutine[Any, Any, None]) -> None:
        """Run ``sending`` on this task while each message the client sends is awaited in
        ``on_message``, one after another, in order; return when ``sending`` does. Raises
        ``Disconnected`` once the client has gone, and what ``on_message`` raised if it did."""
        self._serving = asyncio.current_task()
        queue = getattr(self._receive, "__self__", None)
        reading = None
        try:
            if isinstance(queue, AppQueue):
                while len(queue):  # what came before this, first
                    await self._deliver(on_message, await queue.get())
                queue.consumer = functools.partial(self._deliver, on_message)
            else:
                reading = asyncio.create_task(self._read_into(on_message))
            await sending
        except asyncio.CancelledError:
            if self._ended is None:
                raise
            self._serving.uncancel()  # type: ignore[union-attr]  # this cancel is handled
            raise self._ended from None
        finally:
            self._serving = None
            if isinstance(queue, AppQueue):
                queue.consumer = None
            if reading is not None:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading

    async def _read_into(self, on_message: MessageHandler) -> None:
        while True:
            await self._deliver(on_message, await self._receive())

    async def _deliver(self, on_message: MessageHandler, event: ASGIReceiveEvent) -> None:
        if event["type"] == "websocket.receive":
            try:
                await on_message(_payload(event))
            except Exception as error:  # the serving task raises it, as a reading task would
                self._end(error)
        elif event["type"] == "websocket.disconnect":
            self._end(Disconnected())

    def _end(self, why: BaseException) -> None:
        if self._serving is not None and self._ended is None:
            self._ended = why
            self._serving.cancel()

    async def close(self, code: int, reason: str = "") -> None:
        await self.close_connection(self._send, code, reason)

    def frame_sender(self) -> "FrameSender":
        """How this socket's frames are sent; each send gives up after ``SEND_TIMEOUT_S`` (a
        client that stops reading must not hold a frame, and its memory, forever)."""
        if self._direct is not None:
            return self._direct.send
        return functools.partial(_send_asgi, self._send)  # type: ignore[arg-type]

    @property
    def pinger(self) -> Callable[[], None] | None:
        """Writes a ping frame, on Hypercorn's HTTP/1.1 stream (ASGI has no ping message)."""
        return None if self._direct is None else self._direct.ping


def _payload(event: ASGIReceiveEvent) -> str | bytes:
    """What a ``websocket.receive`` event carries: its bytes or its text."""
    return event.get("bytes") or event.get("text") or ""  # type: ignore[return-value]


def keep_sockets_lean(app: Quart) -> None:
    app.asgi_websocket_class = Socket


def hand_off(lifetime: Lifetime) -> None:
    """Accept the websocket of this view (which then returns None) once the view and its
    contexts are done, and serve its life with ``lifetime(socket)``."""
    socket: Socket = websocket.scope[SOCKET]  # type: ignore[typeddict-item]
    socket.lifetime = lifetime


async def _send_asgi(send: ASGISendCallable, frame: str) -> None:
    async with asyncio.timeout(SEND_TIMEOUT_S):
        await send({"type": "websocket.send", "text": frame, "bytes": None})


@dataclass(slots=True)
class _Direct:
    """Frames written straight to the stream under Hypercorn's ASGI ``send``."""

    stream: WSStream
    writer: asyncio.StreamWriter

    @classmethod
    def under(cls, send: ASGISendCallable) -> "_Direct | None":
        stream = getattr(send, "__self__", None)
        http11 = getattr(getattr(stream, "send", None), "__self__", None)
        writer = getattr(getattr(getattr(http11, "send", None), "__self__", None), "writer", None)
        if isinstance(stream, WSStream) and isinstance(writer, asyncio.StreamWriter):
            return cls(stream, writer)
        return None

    @property
    def open(self) -> bool:
        """False once closed by the client or by Hypercorn: as its own send does, drop frames."""
        return not self.stream.closed and self.stream.state == ASGIWebsocketState.CONNECTED

    def ping(self) -> None:
        if self.open:
            self.writer.write(PING_FRAME)

    async def send(self, frame: str) -> None:
        if not self.open:
            return
        self.writer.write(text_frame(frame))
        if self.writer.transport.get_write_buffer_size() > HIGH_WATER:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.writer.drain()


@functools.lru_cache(maxsize=64)
def text_frame(text: str) -> bytes:
    """One final, unmasked text frame; cached, so the walls sharing a frame share its bytes."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload
