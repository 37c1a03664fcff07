import asyncio
import base64
import os

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import TextMessage

from traitortrack.web.wire import text_frame


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 200_000])
def test_a_frame_written_directly_is_the_frame_wsproto_would_send(size):
    text = ("é" * size)[: size // 2] + "x" * (size - size // 2)
    assert text_frame(text) == Connection(ConnectionType.SERVER).send(TextMessage(data=text))


def test_walls_sharing_a_frame_share_its_bytes():
    frame = '{"type":"events","events":[]}' * 100
    assert text_frame(frame) is text_frame(frame)


@pytest.mark.parametrize("lean_hypercorn", [False, True], ids=["hypercorn", "lean-hypercorn"])
async def test_a_handed_off_socket_is_accepted_pinged_read_and_served_on_hypercorn(
    lean_hypercorn, restore_hypercorn
):
    """Served: its messages reach the handler in order while its own task sends, it answers
    the client's pings, and it ends with ``Disconnected`` when the client goes, or with the
    error its handler raised. Under the lean Hypercorn it keeps no handshake headers."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from quart import Quart

    from tests.live_cluster import free_port
    from traitortrack import lean
    from traitortrack.web.wire import Disconnected, Socket, hand_off, keep_sockets_lean

    if lean_hypercorn:
        assert lean.install()
    app, received, ended = Quart(__name__), asyncio.Queue(), asyncio.Queue()
    keep_sockets_lean(app)

    async def on_message(message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("the handler failed")
        await received.put(message)

    async def sending(socket: Socket) -> None:
        await socket.frame_sender()("serving")
        await asyncio.get_running_loop().create_future()  # until the socket ends

    async def lifetime(socket: Socket) -> None:
        assert socket.pinger is not None
        assert bool(socket.scope["headers"]) is not lean_hypercorn
        socket.pinger()
        await socket.frame_sender()("hi")
        await received.put(await socket.receive())
        try:
            await socket.serve(on_message, sending(socket))
        except (Disconnected, RuntimeError) as error:
            await ended.put(type(error))
            raise

    @app.websocket("/ws")
    async def ws() -> None:
        hand_off(lifetime)

    config, stop, port = Config(), asyncio.Event(), free_port()
    config.bind = [f"127.0.0.1:{port}"]
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))

    async def served(*messages: bytes) -> asyncio.StreamWriter:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        assert await reader.readexactly(2) == bytes((0x89, 0))  # the ping
        assert await reader.readexactly(4) == bytes((0x81, 2)) + b"hi"
        writer.write(bytes((0x89, 0x80)) + bytes(4))  # a ping (masked with a zero key)
        for message in messages:
            writer.write(bytes((0x81, 0x80 | len(message))) + bytes(4) + message)
        assert await reader.readexactly(2) == bytes((0x8A, 0))  # its pong
        assert await reader.readexactly(9) == bytes((0x81, 7)) + b"serving"
        return writer

    try:
        async with asyncio.timeout(5):
            writer = await served(b"first", b"one", b"two")
            assert [await received.get() for _ in range(3)] == ["first", "one", "two"]
            writer.close()
            assert await ended.get() is Disconnected
            await served(b"first", b"boom")
            assert await ended.get() is RuntimeError
    finally:
        stop.set()
        await server
