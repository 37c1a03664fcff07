"""A hung Redis (stopped, not dead: connections stay open and nothing answers) slows nothing
that works without it: sign-in limits fall back to per-worker limits, scans are acked
(ARCHITECTURE.md, "Reliability")."""

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from tests.live_cluster import RedisProcess
from tests.test_auth import limiter_clock_held  # noqa: F401  (fixture)
from tests.web import ADMIN_PASSWORD, app_for, app_logs, csrf_from, sign_in
from traitortrack.config import Settings
from traitortrack.web import limits

pytestmark = pytest.mark.timeout(60)

# A request may pay one Redis timeout (0.5 s) over its usual time (and this machine's jitter).
SLOWER_BY_AT_MOST_S = 2.5
RETRY_S = 2.0


@contextmanager
def _hung(redis: RedisProcess) -> Iterator[None]:
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)


@pytest.fixture
def redis(tmp_path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _timed(request):
    started = time.monotonic()
    async with asyncio.timeout(5):
        response = await request
    return response, time.monotonic() - started


@pytest.mark.usefixtures("limiter_clock_held")
async def test_sign_in_with_a_hung_redis_answers_at_once_and_the_limits_hold_per_worker(
    settings: Settings, redis: RedisProcess, caplog: pytest.LogCaptureFixture, monkeypatch
):
    monkeypatch.setattr(limits, "RETRY_REDIS_S", RETRY_S)
    running = app_for(replace(settings, redis_url=redis.url))
    with app_logs(caplog):
        async with running.test_app() as app:
            client, guesser = app.test_client(), app.test_client()
            token = await csrf_from(guesser)
            wrong = {"username": "ghost", "password": "nope", "csrf_token": token}
            _, usual = await _timed(sign_in(app.test_client(), "admin", ADMIN_PASSWORD))
            _, usual_try = await _timed(guesser.post("/login", form={**wrong, "username": "g0"}))
            with _hung(redis):
                signed_in, took = await _timed(sign_in(client, "admin", ADMIN_PASSWORD))
                tries = [await _timed(guesser.post("/login", form=wrong)) for _ in range(11)]
                async with client.websocket("/ws") as ws:
                    await ws.send(json.dumps({"type": "hello"}))
                    scan = {"type": "scan", "id": "p", "code": "SB10001", "as": "parent"}
                    started = time.monotonic()
                    await ws.send(json.dumps(scan))
                    async with asyncio.timeout(5):
                        while json.loads(await ws.receive())["type"] != "ack":
                            pass
                    acked_in = time.monotonic() - started
            await asyncio.sleep(RETRY_S)
            back, _ = await _timed(guesser.post("/login", form={**wrong, "username": "g2"}))

    assert signed_in.status_code == 302 and took < usual + SLOWER_BY_AT_MOST_S
    # ghost's tenth failure is still answered; the eleventh is over the per-account limit.
    assert [r.status_code for r, _ in tries] == [401] * 10 + [429]
    assert max(t for _, t in tries) < usual_try + SLOWER_BY_AT_MOST_S
    assert acked_in < SLOWER_BY_AT_MOST_S
    assert back.status_code == 401
    said = [r.getMessage() for r in caplog.records if r.name == limits.__name__]
    assert said == [
        "Redis is not answering: sign-in rate limits are now per worker, not shared",
        "Redis answers again: sign-in rate limits are shared again",
    ]
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in caplog.records
               if r.name == limits.__name__)  # fmt: skip
