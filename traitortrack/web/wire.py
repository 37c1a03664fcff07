"""Getting a text frame onto a websocket for as little CPU as possible.

A wall display costs its worker a dozen frames a second, so the per-frame path decides how
many walls a worker keeps. Quart's ``websocket.send`` yields to the loop, re-checks the
handshake and fires a signal; under it Hypercorn builds events, frames the message with
wsproto and takes a lock per frame. Server frames are unmasked (RFC 6455 §5.1), so the bytes
of a frame are the same for every socket: here they are built once per frame (the hub sends
one ``str`` to all the walls of an audience) and written straight to the socket's stream.

That reaches one level under ASGI, into Hypercorn's HTTP/1.1 websocket stream; anywhere else
(the test client, HTTP/2, another server) frames go through the plain ASGI ``send``.
"""

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart

SEND_TIMEOUT_S = 10.0
HIGH_WATER = 64 * 1024  # bytes buffered for a socket before a send waits for the client
ASGI_SEND = "traitortrack.asgi_send"  # the scope key of the server's ASGI send callable
FrameSender = Callable[[str], Awaitable[None]]


def keep_asgi_send(app: Quart) -> None:
    """Put each websocket's ASGI ``send`` in its scope, where ``frame_sender`` finds it."""
    serve = app.asgi_app

    async def asgi_app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, ASGI_SEND: send}  # type: ignore[typeddict-unknown-key]
        await serve(scope, receive, send)

    app.asgi_app = asgi_app  # type: ignore[method-assign]


def frame_sender(scope: Mapping[str, Any]) -> FrameSender:
    """How this websocket's frames are sent; each send gives up after ``SEND_TIMEOUT_S`` (a
    client that stops reading must not hold a frame, and its memory, forever)."""
    send = scope[ASGI_SEND]
    stream = getattr(send, "__self__", None)
    http11 = getattr(getattr(stream, "send", None), "__self__", None)
    writer = getattr(getattr(getattr(http11, "send", None), "__self__", None), "writer", None)
    if isinstance(stream, WSStream) and isinstance(writer, asyncio.StreamWriter):
        return _Socket(stream, writer).send
    return functools.partial(_send_asgi, send)  # type: ignore[arg-type]


async def _send_asgi(send: ASGISendCallable, frame: str) -> None:
    async with asyncio.timeout(SEND_TIMEOUT_S):
        await send({"type": "websocket.send", "text": frame, "bytes": None})


@dataclass(slots=True)
class _Socket:
    stream: WSStream
    writer: asyncio.StreamWriter

    async def send(self, frame: str) -> None:
        if self.stream.closed or self.stream.state != ASGIWebsocketState.CONNECTED:
            return  # closed by the client or by Hypercorn: as its own send does, drop it
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
