"""What a worker process holds while it serves: settings, the database pool, the Redis client.

Created in ``before_serving`` (never at import: each Hypercorn worker needs its own pool, bound
to its own event loop) and closed in ``after_serving``.
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from quart import Quart, current_app
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.config import Settings
from traitortrack.db.embedded import start_embedded_postgres
from traitortrack.db.engine import create_engine
from traitortrack.db.migrate import migrate
from traitortrack.db.retention import EventRetention
from traitortrack.db.slow_queries import watch
from traitortrack.monitoring import probes
from traitortrack.monitoring.monitor import Monitor
from traitortrack.realtime.live import Live
from traitortrack.redis_clients import quick_redis
from traitortrack.services.group_commit import settle
from traitortrack.services.quotas import Quotas
from traitortrack.services.users import ADMIN_USERNAME, ensure_admin

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    redis: Redis | None
    live: "Live"
    # Replaceable so tests can move time (lockouts, session expiry, TOTP steps).
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monitor: Monitor | None = None
    retention: EventRetention | None = None
    quotas: Quotas = field(init=False)
    # Pooled connections that websocket handshakes (session look-ups, replays) may hold at
    # once: the rest of the pool stays free for scans during a reconnect storm.
    handshakes: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.handshakes = asyncio.Semaphore(max(2, self.settings.db_pool_size // 4))
        limits = self.settings
        self.quotas = Quotas(
            self.engine, limits.scans_per_second, limits.scan_burst, limits.sockets_per_account
        )

    async def check_database(self) -> None:
        async with asyncio.timeout(READY_TIMEOUT_S), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def check_bus(self) -> None:
        if self.redis is not None:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.redis.ping()


def runtime(app: Quart | None = None) -> Runtime:
    return (app or current_app).extensions["traitortrack"]


async def start(app: Quart, settings: Settings) -> None:
    if settings.uses_embedded_database:
        url = await asyncio.to_thread(start_embedded_postgres, settings.data_dir)
        settings = settings.with_database(url)
    engine = create_engine(settings)
    probes.slow_queries.threshold_ms = settings.slow_query_ms
    watch(engine, probes.slow_queries)
    if settings.migrate_on_start:
        await migrate(engine)
    generated = await ensure_admin(engine, settings.admin_password)
    if generated is not None:
        # Printed, not logged: it is shown once to the person starting the app, never stored.
        print(
            f"\n  Created the '{ADMIN_USERNAME}' account. Log in with\n"
            f"    username: {ADMIN_USERNAME}\n    password: {generated}\n"
            "  (shown once; set ADMIN_PASSWORD to choose it yourself)\n",
            flush=True,
        )
    redis = quick_redis(settings.redis_url) if settings.redis_url else None
    state = Runtime(settings, engine, redis, live=None)  # type: ignore[arg-type]
    state.live = await Live.start(engine, settings, lambda: state.clock())
    state.monitor = await Monitor.start(engine, settings, redis, state.live)
    retention = timedelta(days=settings.event_retention_days)
    state.retention = EventRetention.start(engine, retention, lambda: state.clock())
    logging.getLogger().addHandler(probes.error_counter)
    app.extensions["traitortrack"] = state
    log.info("worker ready", extra={"redis": settings.redis_url is not None})


async def stop(app: Quart) -> None:
    state = app.extensions.pop("traitortrack", None)
    if state is None:
        return
    await settle(state.engine)  # scans already queued get committed and answered
    logging.getLogger().removeHandler(probes.error_counter)
    if state.retention is not None:
        await state.retention.stop()
    if state.monitor is not None:
        await state.monitor.stop()
    await state.live.stop()
    if state.redis is not None:
        await state.redis.aclose()
    await state.engine.dispose()


def drain(app: Quart) -> None:
    """Before a stop: ask websocket clients to reconnect, each once its in-flight scan is acked
    (the server waits for the sockets to close, up to its ``graceful_timeout``)."""
    state = app.extensions.get("traitortrack")
    if state is not None:
        state.live.drain()
