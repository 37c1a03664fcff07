"""The live side of a worker: hub, bus, counters and the timers that drive them."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.config import Settings
from traitortrack.realtime.bus import LocalBus, RedisBus
from traitortrack.realtime.counters import LiveCounters
from traitortrack.realtime.hub import COALESCE_HZ, Hub
from traitortrack.realtime.outbox import Settling, current_snapshot, newest_id
from traitortrack.tasks import stop_tasks

log = logging.getLogger(__name__)

METRICS_EVERY_S = 1.0
SWEEP_EVERY_S = 1.0
PING_EVERY_S = 20.0  # idle sockets are cut by proxies after 60 s or more (e.g. nginx, ELB)


@dataclass
class Live:
    engine: AsyncEngine
    hub: Hub
    bus: LocalBus
    metrics_source: Callable[[], dict[str, Any]] = lambda: {}
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, engine: AsyncEngine, settings: Settings, clock: Callable[[], datetime]
    ) -> "Live":
        counters = LiveCounters.starting(ZoneInfo(settings.timezone), clock())
        async with engine.connect() as connection:
            # One snapshot for all, so the counters are exactly those of the events <= position
            # committed in it; those still in flight below position are delivered as they commit.
            conn = await connection.execution_options(isolation_level="REPEATABLE READ")
            position = await newest_id(conn)
            settling = Settling(position, await current_snapshot(conn))
            await counters.recount(conn, clock())
        hub = Hub(counters, clock, position)
        bus: LocalBus = (
            RedisBus(
                engine,
                hub,
                settling,
                redis_url=settings.redis_url,
                prefix=settings.redis_prefix,
            )
            if settings.redis_url
            else LocalBus(engine, hub, settling)
        )
        await bus.start()
        live = cls(engine, hub, bus)
        live._tasks = [
            asyncio.create_task(live._flush()),
            asyncio.create_task(live._metrics()),
            asyncio.create_task(live._sweep_sessions()),
            asyncio.create_task(live._ping()),
        ]
        return live

    def drain(self) -> None:
        """Tell every websocket to reconnect elsewhere (close 1012), now and until the stop."""
        log.info("draining", extra={"connections": len(self.hub.connections)})
        self.hub.drain()

    async def stop(self) -> None:
        self.hub.close_all()
        await stop_tasks(*self._tasks)
        await self.bus.stop()

    async def _flush(self) -> None:
        while True:
            await asyncio.sleep(1 / COALESCE_HZ)
            self.hub.flush_coalesced()

    async def _metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_EVERY_S)
            try:
                self.hub.broadcast_metrics(
                    {"hub": self.hub.stats(), "bus": self.bus.status, **self.metrics_source()}
                )
            except Exception:
                log.exception("metrics frame failed")

    async def _sweep_sessions(self) -> None:
        """End sockets whose session or display link was revoked or ran out.

        One sweeper per worker instead of a timer task per socket: sockets that are due share
        one check per session (a thousand walls on one display link cost one query).
        """
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await self.hub.check_sessions(asyncio.get_running_loop().time())
            except Exception:
                log.exception("session sweep failed")

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(PING_EVERY_S)
            self.hub.ping_all()
