"""How `traitortrack serve` stops (ARCHITECTURE.md, "Reliability"; docs/reliability.md): it
stops listening first, so that a new server on the same port gets every new connection; a
websocket that still gets through while it drains is told to reconnect at once; a worker that
does not stop in time is killed, one that keeps crashing is given up on, and either way the
server says so with its exit status."""

import asyncio
import time

import pytest
import websockets
from sqlalchemy import text

from tests.browser import server_env
from tests.live_cluster import AppServer, LiveClient, login, ws_url

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


async def _exit_status(server: AppServer, seconds: float) -> int | None:
    """The runner's exit status once it has exited, or None if it still runs after ``seconds``."""
    assert server.process is not None
    deadline = time.monotonic() + seconds
    while (status := server.process.poll()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return status


async def _open_websocket(server: AppServer, cookie: str) -> websockets.ClientConnection:
    return await websockets.connect(ws_url(server), additional_headers={"Cookie": cookie})


async def test_a_websocket_that_opens_while_the_server_drains_is_told_to_reconnect_at_once(
    settings, tmp_path, engine
):
    server = AppServer("drain", server_env(settings, tmp_path), tmp_path / "server.log")
    late: asyncio.Task | None = None
    try:
        server.start()
        await server.wait_ready()
        cookie = await login(server, "admin", "Browser-pass1")
        wall = await LiveClient.open(server, cookie, view="wall")
        async with engine.begin() as conn:
            # Holds the handshake of the next socket in its session lookup, so that it is
            # still being opened when the drain begins.
            await conn.execute(text('LOCK TABLE "user" IN ACCESS EXCLUSIVE MODE'))
            late = asyncio.create_task(_open_websocket(server, cookie))
            async with engine.connect() as watch:
                while not await watch.scalar(  # noqa: ASYNC110
                    text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                ):
                    await asyncio.sleep(0.05)
            server.process.terminate()
            async with asyncio.timeout(5):
                await wall._reader  # the open socket is drained: closed 1012
            assert wall.close_code == 1012
        released_at = time.monotonic()
        async with asyncio.timeout(5):
            socket = await late
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(1.5):
                await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        print(f"1012 {time.monotonic() - released_at:.2f} s after the handshake could go on")
        assert await _exit_status(server, 10) == 0, server.log_tail()
    finally:
        if late is not None:
            late.cancel()
        server.stop(grace_s=0)
    assert "Traceback" not in server.log_text(), server.log_tail(80)
    assert "CancelledError" not in server.log_text(), server.log_tail(80)
