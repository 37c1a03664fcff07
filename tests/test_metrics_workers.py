"""/metrics and the health view across Hypercorn workers: whichever worker answers a scrape,
it counts every worker, and a worker that dies stops counting in the gauges but not in the
counters (multiprocess mode, see traitortrack/monitoring/prometheus.py)."""

import asyncio
import os
import re
import signal
import time
import uuid

import httpx
import pytest

from tests.browser import server_env
from tests.live_cluster import AppServer, LiveClient, RedisProcess, login

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

TOKEN = "scrape-" + "w" * 40
ADMIN_PASSWORD = "Browser-pass1"  # tests/browser.py server_env


def _value(body: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "")
    found = re.search(rf"^{pattern} ([0-9.e+-]+)$", body, re.MULTILINE)
    assert found, f"{name}{{{labels}}} not in:\n{body[:2000]}"
    return float(found.group(1))


async def _scrapes(server: AppServer, times: int) -> list[str]:
    # A new connection each time, so that the kernel hands them to either worker.
    bodies = []
    for _ in range(times):
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
            response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200, response.text[:300]
            bodies.append(response.text)
    return bodies


async def _scan_over_http(server: AppServer, cookie: str, code: str) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
        client.headers["Cookie"] = cookie
        token = re.search(r'name="csrf-token" content="([^"]+)"', (await client.get("/")).text)
        response = await client.post(
            "/api/v1/scans",
            json={"id": str(uuid.uuid4()), "code": code, "as": "parent"},
            headers={"X-CSRF-Token": token.group(1)},
        )
        assert response.json()["outcome"] == "ok", response.text


async def test_every_scrape_counts_every_worker_even_after_one_dies(settings, tmp_path):
    redis = RedisProcess(tmp_path / "redis")
    env = server_env(
        settings,
        tmp_path,
        REDIS_URL=redis.url,
        REDIS_PREFIX=f"tt-metrics:{uuid.uuid4().hex[:12]}",
        METRICS_TOKEN=TOKEN,
    )
    server = AppServer("two-workers", env, tmp_path / "server.log", workers=2)
    sockets: list[LiveClient] = []
    try:
        redis.start()
        server.start()
        await server.wait_ready()
        assert len(server.worker_processes()) == 2, server.log_tail()
        cookie = await login(server, "admin", ADMIN_PASSWORD)
        for _ in range(6):
            sockets.append(await LiveClient.open(server, cookie, view="wall"))
        for i in range(5):
            await _scan_over_http(server, cookie, f"SB7{i:04d}")
        await asyncio.sleep(1.5)  # every worker has sampled its clients since

        for body in await _scrapes(server, 8):
            assert _value(body, "traitortrack_workers") == 2
            assert _value(body, "traitortrack_clients", 'role="admin"') == 6
            assert _value(body, "traitortrack_scans_total", 'kind="parent",outcome="ok"') == 5
            assert _value(body, "traitortrack_db_pool_size") >= 2  # both pools hold some

        # The merged health view: both workers, every socket, from whichever worker sends it.
        watcher = await LiveClient.open(server, cookie, view="metrics")
        sockets.append(watcher)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            system = watcher.metrics.get("system", {})
            if len(system.get("workers", [])) == 2 and system["clients"].get("admin") == 7:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"no merged view of both workers: {watcher.metrics}")
        assert system["bus"]["kind"] == "redis" and system["bus"]["up"]
        assert system["bus"]["leader"] in {w["worker"] for w in system["workers"]}

        # A worker dies: the runner starts another; gauges forget the dead one, counters don't.
        victim = server.worker_processes()[0].pid
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = [w.pid for w in server.worker_processes()]
            if len(alive) == 2 and victim not in alive:
                break
            await asyncio.sleep(0.2)
        await server.wait_ready()
        # The new worker counts itself once its start-up is done (slow on a busy machine).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _value((await _scrapes(server, 1))[0], "traitortrack_workers") == 2:
                break
            await asyncio.sleep(0.2)
        for body in await _scrapes(server, 6):
            assert _value(body, "traitortrack_workers") == 2
            assert _value(body, "traitortrack_scans_total", 'kind="parent",outcome="ok"') == 5
    finally:
        for client in sockets:
            await client.close()
        server.stop(grace_s=3)
        redis.kill()
