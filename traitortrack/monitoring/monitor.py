"""Each worker's once-a-second sample, the whole server's view merged from them, an hour of it.

Every second a worker samples itself (pool, clients, latencies, memory, CPU...), sets its
Prometheus gauges, and shares the sample through Redis (a key that expires when the worker is
gone). It then reads every live worker's sample and merges them into the server's view, which
admins' metrics sockets receive and whose last hour the health page draws. Without Redis there
is one worker, and its own sample is the whole view.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.config import Settings
from traitortrack.db.gauges import database_status, pool_status, usage_level
from traitortrack.domain.roles import Role
from traitortrack.monitoring import probes, prometheus
from traitortrack.monitoring.windows import History, LatencyWindow, merge, percentiles
from traitortrack.realtime.live import Live
from traitortrack.tasks import stop_tasks

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0
SAMPLE_TTL_S = 5
DATABASE_EVERY_S = 15.0
HISTORY_POINTS = 3600  # an hour of one-second points
# Bumped when a sample's shape changes: during a rolling deployment the two kinds of worker
# share Redis, and each merges only the samples it understands.
SAMPLE_SCHEMA = 1
ROLES = (*(str(role) for role in Role), "display")
QUANTILES = (0.5, 0.95, 0.99)

# The health page's charts: a name and how to read it from a merged view.
SERIES = {
    "events_per_s": lambda v: v["events_per_s"],
    "scans_per_s": lambda v: v["scans_per_s"],
    "ack_p50": lambda v: v["ack_ms"]["p50"],
    "ack_p95": lambda v: v["ack_ms"]["p95"],
    "ack_p99": lambda v: v["ack_ms"]["p99"],
    "fanout_p99": lambda v: v["fanout_ms"]["p99"],
    "pool_usage_pct": lambda v: v["pool"]["busiest_worker_pct"],
    "pool_checked_out": lambda v: v["pool"]["checked_out"],
    "clients": lambda v: v["clients_total"],
    "error_rate_pct": lambda v: v["errors"]["error_rate_pct"],
    "memory_mb": lambda v: round(v["memory_bytes"] / 2**20, 1),
    "cpu_pct": lambda v: v["cpu_pct"],
}


@dataclass
class Monitor:
    engine: AsyncEngine
    settings: Settings
    redis: Redis | None
    live: Live
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    latest: dict[str, Any] = field(default_factory=dict)
    history: History = field(default_factory=lambda: History(tuple(SERIES), HISTORY_POINTS))
    fanout: LatencyWindow = field(default_factory=LatencyWindow)
    _process: psutil.Process = field(default_factory=psutil.Process)
    _database: dict[str, Any] | None = None
    _database_at: float = 0.0
    _delivered: int = 0
    _reconnects: int = 0
    _cpu_seconds: float = 0.0
    _last_at: float = field(default_factory=time.monotonic)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, engine: AsyncEngine, settings: Settings, redis: Redis | None, live: Live
    ) -> "Monitor":
        monitor = cls(engine, settings, redis, live)
        monitor._delivered = live.hub.stats()["delivered"]
        monitor._cpu_seconds = monitor._cpu_time()
        monitor._process.cpu_percent(None)  # the first reading only starts the measure
        prometheus.WORKERS.set(1)
        monitor.latest = monitor._merge([monitor._sample()])
        live.metrics_source = lambda: {"system": monitor.latest}
        monitor._task = asyncio.create_task(monitor._run())
        return monitor

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks(self._task)
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.zrem(self._workers_key, self.worker)

    @property
    def _workers_key(self) -> str:
        return f"{self.settings.redis_prefix}:monitor:workers"

    def _sample_key(self, worker: str) -> str:
        return f"{self.settings.redis_prefix}:monitor:{worker}"

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            try:
                await self.tick()
            except Exception:
                log.exception("monitor sample failed")

    async def tick(self) -> None:
        """Sample this worker, share it, and merge every worker's view."""
        if time.monotonic() - self._database_at >= DATABASE_EVERY_S:
            self._database_at = time.monotonic()
            try:
                async with asyncio.timeout(2):
                    self._database = await database_status(self.engine)
            except (DBAPIError, OSError, TimeoutError) as error:
                log.warning("database size unavailable", extra={"error": repr(error)})
        sample = self._sample()
        view = self._merge(await self._share(sample))
        self.latest = view
        self.history.append(view["t"], [read(view) for read in SERIES.values()])

    def set_gauges(self) -> dict[str, Any]:
        """This worker's current gauges (also run right before a scrape, so it is current)."""
        pool = pool_status(self.engine, self.settings.db_max_overflow)
        prometheus.POOL_SIZE.set(pool["size"])
        prometheus.POOL_CHECKED_OUT.set(pool["checked_out"])
        prometheus.POOL_OVERFLOW.set(pool["overflow"])
        prometheus.POOL_CAPACITY.set(pool["capacity"])
        prometheus.POOL_USAGE.set(pool["usage_pct"] / 100)
        clients = self.live.hub.stats()["clients"]
        for role in ROLES:
            prometheus.CLIENTS.labels(role).set(clients.get(role, 0))
        prometheus.EVENT_POSITION.set(self.live.hub.position)
        prometheus.BUS_UP.set(1 if self.live.bus.status.get("up") else 0)
        return {"pool": pool, "clients": clients}

    def _sample(self) -> dict[str, Any]:
        now = time.monotonic()
        elapsed, self._last_at = max(now - self._last_at, 1e-3), now
        current = self.set_gauges()
        hub = self.live.hub.stats()
        delivered, self._delivered = hub["delivered"] - self._delivered, hub["delivered"]
        for lag in self.live.hub.recent_lags_ms(delivered):
            prometheus.FANOUT_LAG.observe(lag / 1000)
            self.fanout.observe(lag)
        bus = self.live.bus.status
        reconnects = bus.get("reconnects", 0)
        if reconnects > self._reconnects:
            prometheus.BUS_RECONNECTS.inc(reconnects - self._reconnects)
        self._reconnects = reconnects
        cpu_seconds = self._cpu_time()
        prometheus.CPU.inc(max(cpu_seconds - self._cpu_seconds, 0))
        self._cpu_seconds = cpu_seconds
        rss = self._process.memory_info().rss
        prometheus.MEMORY.set(rss)
        if self._database is not None:
            prometheus.DATABASE_SIZE.set(self._database["size_bytes"])
        return {
            "schema": SAMPLE_SCHEMA,
            "worker": self.worker,
            "pid": os.getpid(),
            "at": time.time(),
            **current,
            "bus": bus,
            "position": hub["position"],
            "events_per_s": round(delivered / elapsed, 1),
            "rss": rss,
            "cpu_pct": self._process.cpu_percent(None),
            "acks": probes.acks.buckets(),
            "fanout": self.fanout.buckets(),
            "scans_second": probes.scans.last_second(),
            "scans_minute": probes.scans.last_minute(),
            "requests_minute": probes.requests.last_minute(),
            "server_errors_minute": probes.server_errors.last_minute(),
            "errors_logged_minute": probes.errors_logged.last_minute(),
            "slow_queries": probes.slow_queries.top(),
            "database": self._database,
        }

    def _cpu_time(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    async def _share(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        """Publish this worker's sample; return every live worker's (just ours without Redis)."""
        if self.redis is None:
            return [sample]
        now = time.time()
        try:
            async with asyncio.timeout(1):
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(self._sample_key(self.worker), json.dumps(sample), ex=SAMPLE_TTL_S)
                pipe.zadd(self._workers_key, {self.worker: now})
                pipe.zremrangebyscore(self._workers_key, "-inf", now - 60)
                pipe.zrangebyscore(self._workers_key, now - SAMPLE_TTL_S, "+inf")
                *_, workers = await pipe.execute()
                others = [w.decode() for w in workers if w.decode() != self.worker]
                raw = await self.redis.mget([self._sample_key(w) for w in others]) if others else []
        except (RedisError, OSError, TimeoutError):
            return [sample]  # Redis is down: the bus status on the page says so
        shared = [json.loads(r) for r in raw if r is not None]
        return [sample, *(s for s in shared if s.get("schema") == SAMPLE_SCHEMA)]

    def _merge(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        samples = sorted(samples, key=lambda s: s["worker"])
        clients: dict[str, int] = {}
        for s in samples:
            for role, n in s["clients"].items():
                clients[role] = clients.get(role, 0) + n
        pool = {
            name: sum(s["pool"][name] for s in samples)
            for name in ("size", "checked_out", "overflow", "capacity")
        }
        busiest = max(s["pool"]["usage_pct"] for s in samples)
        pool |= {
            "usage_pct": round(100 * pool["checked_out"] / pool["capacity"], 1)
            if pool["capacity"]
            else 0.0,
            "busiest_worker_pct": busiest,
            "level": usage_level(busiest),
        }
        requests = sum(s["requests_minute"] for s in samples)
        server_errors = sum(s["server_errors_minute"] for s in samples)
        buses = [s["bus"] for s in samples]
        databases = [s["database"] for s in samples if s.get("database")]
        now = time.time()
        return {
            "t": round(now, 3),  # the charts' time axis (epoch seconds)
            "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            "workers": [
                {
                    "worker": s["worker"],
                    "pid": s["pid"],
                    "clients": s["clients"],
                    "pool": s["pool"],
                    "memory_bytes": s["rss"],
                    "cpu_pct": s["cpu_pct"],
                    "position": s["position"],
                    "bus_up": s["bus"].get("up", False),
                    "leader": s["bus"].get("leader", False),
                }
                for s in samples
            ],
            "clients": clients,
            "clients_total": sum(clients.values()),
            "pool": pool,
            "database": databases[0] if databases else None,
            # Every worker's hub sees every event: the busiest one's rate is the server's.
            "events_per_s": max(s["events_per_s"] for s in samples),
            "scans_per_s": sum(s["scans_second"] for s in samples),
            "scans_last_minute": sum(s["scans_minute"] for s in samples),
            "ack_ms": percentiles(merge(s["acks"] for s in samples), QUANTILES),
            "fanout_ms": percentiles(merge(s["fanout"] for s in samples), QUANTILES),
            "errors": {
                "requests_last_minute": requests,
                "server_errors_last_minute": server_errors,
                "error_rate_pct": round(100 * server_errors / requests, 2) if requests else 0.0,
                "logged_last_minute": sum(s["errors_logged_minute"] for s in samples),
            },
            "bus": {
                "kind": buses[0].get("kind"),
                "up": all(b.get("up", False) for b in buses),
                "reconnects": sum(b.get("reconnects", 0) for b in buses),
                "leader": next((s["worker"] for s in samples if s["bus"].get("leader")), None),
            },
            "slow_queries": _merge_slow(s["slow_queries"] for s in samples),
            "slow_query_ms": self.settings.slow_query_ms,
            "memory_bytes": sum(s["rss"] for s in samples),
            "cpu_pct": round(sum(s["cpu_pct"] for s in samples), 1),
        }


def _merge_slow(per_worker: Any, limit: int = 20) -> list[dict[str, Any]]:
    shapes: dict[str, dict[str, Any]] = {}
    for top in per_worker:
        for s in top:
            found = shapes.get(s["shape"])
            if found is None:
                shapes[s["shape"]] = dict(s)
                continue
            found["count"] += s["count"]
            found["total_ms"] = round(found["total_ms"] + s["total_ms"], 1)
            found["max_ms"] = max(found["max_ms"], s["max_ms"])
            if s["last_at"] > found["last_at"]:
                found["last_at"], found["last_ms"] = s["last_at"], s["last_ms"]
    return sorted(shapes.values(), key=lambda s: s["total_ms"], reverse=True)[:limit]
