"""How `traitortrack serve` stops (ARCHITECTURE.md, "Reliability"; docs/reliability.md): it
stops listening first, so that a new server on the same port gets every new connection; a
websocket that still gets through while it drains is told to reconnect at once; a worker that
does not stop in time is killed, one that keeps crashing is given up on, and either way the
server says so with its exit status."""

import asyncio
import json
import re
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
import pytest
import websockets
from sqlalchemy import text

from tests.browser import server_env
from tests.conftest import make_actor
from tests.live_cluster import ROOT, AppServer, LiveClient, RedisProcess, free_port, login, ws_url
from traitortrack.domain.roles import Role

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

HAMMERS = 4
HEALTH_TIMEOUT_S = 2.0
WALLS = 6
PASSWORD = "Secret-pass1"  # tests/conftest.py make_actor
WAITING_FOR_USERS = """
    SELECT count(*) FROM pg_locks
    WHERE NOT granted AND relation = '"user"'::regclass
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _short_stops_config(directory: Path) -> Path:
    """hypercorn.toml with a stop that gives up soon (the project's waits 30 s for sockets)."""
    toml = (ROOT / "hypercorn.toml").read_text()
    toml = re.sub(r"(?m)^graceful_timeout = .*$", "graceful_timeout = 1", toml)
    toml = re.sub(r"(?m)^shutdown_timeout = .*$", "shutdown_timeout = 2", toml)
    path = directory / "hypercorn-short-stops.toml"
    path.write_text(toml)
    return path


async def _exit_status(server: AppServer, seconds: float) -> int | None:
    """The runner's exit status once it has exited, or None if it still runs after ``seconds``."""
    assert server.process is not None
    deadline = time.monotonic() + seconds
    while (status := server.process.poll()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return status


async def _health(port: int) -> str:
    """One GET /health on a new connection: ok, refused, reset or timeout."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /health HTTP/1.1\r\nHost: tt\r\nConnection: close\r\n\r\n")
                line = await reader.readline()
            finally:
                writer.close()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "reset"
    return "ok" if line.startswith(b"HTTP/1.1 200") else "reset"


async def _hammer(port: int, outcomes: list[tuple[float, str]], until: asyncio.Event) -> None:
    while not until.is_set():
        outcomes.append((time.monotonic(), outcome := await _health(port)))
        await asyncio.sleep(0.01 if outcome == "ok" else 0.05)  # as a client retries


async def _wall(
    server: AppServer, cookie: str, outcomes: list[tuple[float, str]], until: asyncio.Event
) -> None:
    """A wall display on ``server``'s port that reconnects when it is closed, as
    static/js/live.js does."""
    while not until.is_set():
        try:
            client = await LiveClient.open(server, cookie, view="wall")
        except ConnectionRefusedError:
            outcomes.append((time.monotonic(), "refused"))
        except TimeoutError:
            outcomes.append((time.monotonic(), "timeout"))
        except (OSError, websockets.WebSocketException) as error:
            outcomes.append((time.monotonic(), f"failed: {error!r}"))
        else:
            outcomes.append((time.monotonic(), "ok"))
            while not until.is_set() and client.is_open:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await client.close()
        await asyncio.sleep(0.1)


async def test_a_server_started_on_the_port_of_a_stopping_one_gets_every_new_connection(
    settings, tmp_path, engine
):
    await make_actor(engine, Role.SUPERVISOR, name="walltv")
    redis = RedisProcess(tmp_path / "redis")
    env = server_env(
        settings, tmp_path, REDIS_URL=redis.url, REDIS_PREFIX=f"tt-deploy:{uuid.uuid4().hex[:12]}"
    )
    old = AppServer("old", env, tmp_path / "old.log", workers=2)
    new = AppServer("new", env, tmp_path / "new.log", workers=2, port=old.port)
    until = asyncio.Event()
    health: list[tuple[float, str]] = []
    walls: list[tuple[float, str]] = []
    clients: list[asyncio.Task[None]] = []
    try:
        redis.start()
        old.start()
        await old.wait_listening()
        cookie = await login(old, "walltv", PASSWORD)
        clients = [asyncio.create_task(_wall(old, cookie, walls, until)) for _ in range(WALLS)]
        while sum(1 for _, o in walls if o == "ok") < WALLS:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        clients += [asyncio.create_task(_hammer(old.port, health, until)) for _ in range(HAMMERS)]
        await asyncio.sleep(0.5)
        stopped_at = time.monotonic()
        old.process.terminate()
        await asyncio.sleep(1)
        new.start()
        await new.wait_listening()
        ready_at = time.monotonic()
        await asyncio.sleep(3)
        until.set()
        await asyncio.gather(*clients)
        old_status = await _exit_status(old, 10)
    finally:
        until.set()
        for task in clients:
            task.cancel()
        old.stop(grace_s=0)
        new.stop(grace_s=3)
        redis.kill()

    after = [o for t, o in health if t >= ready_at]
    before = [o for t, o in health if stopped_at <= t < ready_at]
    refused = [t for t, o in health if o == "refused"]
    print(
        json.dumps({
            "health_before_ready": Counter(before),
            "health_after_ready": Counter(after),
            "refused_for_s": round(max(refused) - min(refused), 2) if refused else 0,
            "new_ready_after_stop_s": round(ready_at - stopped_at, 2),
            "walls": Counter(o for t, o in walls if t >= stopped_at),
        })
    )  # fmt: skip
    assert "timeout" not in [o for _, o in health + walls], f"{Counter(o for _, o in health)}"
    assert after and set(after) == {"ok"}, Counter(after)
    # Until the new server listens nothing does: a client is refused at once and retries.
    assert set(before) <= {"ok", "refused"}, Counter(before)
    assert {o for t, o in walls if t >= ready_at} <= {"ok"}, walls
    assert old_status == 0, old.log_tail()
    assert "Traceback" not in old.log_text(), old.log_tail(80)


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
                while not await watch.scalar(text(WAITING_FOR_USERS)):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            server.process.terminate()
            assert await wall.wait_closed(5) == 1012  # the open socket is drained
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


async def test_a_worker_that_hangs_on_stop_is_killed_after_the_grace_and_the_exit_says_so(
    settings, tmp_path
):
    server = AppServer(
        "hang", server_env(settings, tmp_path), tmp_path / "server.log",
        config=_short_stops_config(tmp_path),
    )  # fmt: skip
    try:
        server.start()
        await server.wait_ready()
        (worker,) = server.worker_processes()
        metrics = Path(worker.environ()["PROMETHEUS_MULTIPROC_DIR"])
        assert await asyncio.to_thread(metrics.is_dir)
        worker.send_signal(signal.SIGSTOP)  # stuck: it will not answer SIGTERM
        stopped_at = time.monotonic()
        server.process.terminate()
        status = await _exit_status(server, 15)
        took = time.monotonic() - stopped_at
    finally:
        server.stop(grace_s=0)
    print(f"runner exited {status} after {took:.1f} s")
    assert status not in (None, 0), server.log_tail()
    assert not psutil.pid_exists(worker.pid), "the hung worker was left behind"
    # Killed graceful_timeout + shutdown_timeout + 2 s after the request to stop; the rest is
    # the runner's own exit (slow on a busy machine).
    assert "worker did not stop in time; killed grace_s=5.0" in server.log_text()
    assert took < 10
    assert not await asyncio.to_thread(metrics.exists)


async def test_a_worker_that_crashes_at_every_start_is_restarted_later_and_later_then_given_up(
    settings, tmp_path
):
    env = server_env(settings, tmp_path, WORKER_CRASH_LIMIT="3")
    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing-listens"
    server = AppServer("crash", env, tmp_path / "server.log")
    try:
        server.start()
        status = await _exit_status(server, 60)
    finally:
        server.stop(grace_s=0)
    log = server.log_text()
    assert status not in (None, 0), server.log_tail()
    delays = [float(d) for d in re.findall(r"restart_in_s=([0-9.]+)", log)]
    assert delays == [0.0, 1.0], log[-3000:]
    assert "giving up" in log, server.log_tail()
