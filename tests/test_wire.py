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
async def test_a_handed_off_socket_is_accepted_pinged_and_read_on_hypercorn(
    lean_hypercorn, restore_hypercorn
):
    import asyncio
    import base64
    import os

    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from quart import Quart

    from tests.live_cluster import free_port
    from traitortrack import lean
    from traitortrack.web.wire import Socket, hand_off, keep_sockets_lean

    if lean_hypercorn:
        assert lean.install()
    app, received = Quart(__name__), asyncio.Queue()
    keep_sockets_lean(app)

    async def lifetime(socket: Socket) -> None:
        assert socket.pinger is not None
        socket.pinger()
        await socket.frame_sender()("hi")
        await received.put(await socket.receive())

    @app.websocket("/ws")
    async def ws() -> None:
        hand_off(lifetime)

    config, stop, port = Config(), asyncio.Event(), free_port()
    config.bind = [f"127.0.0.1:{port}"]
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
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
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            assert await reader.readexactly(2) == bytes((0x89, 0))  # the ping
            assert await reader.readexactly(4) == bytes((0x81, 2)) + b"hi"
            writer.write(bytes((0x81, 0x82)) + bytes(4) + b"ok")  # masked with a zero key
            assert await received.get() == "ok"
        writer.close()
    finally:
        stop.set()
        await server
