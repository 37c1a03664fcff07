"""Getting committed events to every worker's hub, in id order, exactly once.

Two buses with one interface:

* ``LocalBus`` (no ``REDIS_URL``; one worker): the worker follows the outbox itself.
* ``RedisBus``: one worker, the leader (it holds a PostgreSQL advisory lock), follows the
  outbox and publishes each batch on one Redis channel, with the id it follows on (``prev``).
  Every worker keeps one subscription and fans out in-process. A worker that finds a gap
  (``prev`` past its position) reads the missing range from the outbox first. While Redis is
  unreachable each worker follows the outbox on its own, so local clients keep getting events
  and nothing is missed when Redis returns.

Whoever starts following the outbox from a position (a worker starting at the newest id, a
reader or relay taking over, a worker catching up to the relay) may pass ids still in flight
below it: those are delivered as they commit (``Settling``).
"""

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.domain.events import Event
from traitortrack.realtime.hub import Hub
from traitortrack.realtime.outbox import OutboxReader, Settling, current_snapshot, events_between
from traitortrack.tasks import stop_tasks

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.01
HEARTBEAT_S = 1.0
# Well past the leader's heartbeat, so a follower does not flap at idle.
DEGRADED_AFTER_S = 2 * HEARTBEAT_S
LEADER_LOCK_KEY = 0x74725F72656C6179  # "tr_relay"
CATCH_UP_LIMIT = 100_000


@dataclass
class LocalBus:
    engine: AsyncEngine
    hub: Hub
    settling: Settling | None = None  # the in-flight events below the hub's start position
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def status(self) -> dict[str, Any]:
        return {"kind": "in-process", "up": True}

    def kick(self) -> None:
        """A transaction on this worker just committed events: look now, not at the next tick."""
        self._wake.set()

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow_outbox(lambda: True)))
        self._start_settling(self.settling)

    def _start_settling(self, settling: Settling | None) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        if settling is not None:
            self._tasks.append(asyncio.create_task(self._settle(settling)))

    async def _settle(self, settling: Settling) -> None:
        """Deliver to the local hub the events below a position it took that were in flight."""
        while True:
            try:
                async with self.engine.connect() as conn:
                    while True:
                        if late := await settling.poll(conn):
                            self.hub.deliver((), late)
                        if settling.done:
                            return
                        await asyncio.sleep(POLL_INTERVAL_S)
            except (DBAPIError, OSError) as error:
                log.warning("settling lost the database", extra={"error": repr(error)})
                await asyncio.sleep(1)

    async def stop(self) -> None:
        await stop_tasks(*self._tasks)

    async def _sleep(self, seconds: float) -> None:
        # A timer that sets the event, not asyncio.timeout(): on Python 3.11 a cancel that
        # lands as the timeout expires can be swallowed as a TimeoutError, and a loop polling
        # every 10 ms hits that often enough to make a stop hang.
        timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()
        self._wake.clear()

    async def _reader(self, conn: AsyncConnection) -> OutboxReader:
        """A reader from the hub's position that also delivers the ids below it in flight now."""
        position = self.hub.position
        return OutboxReader(position, settling=Settling(position, await current_snapshot(conn)))

    async def _follow_outbox(self, active: Callable[[], bool]) -> None:
        """Deliver the outbox to the local hub while ``active()`` says so."""
        reader: OutboxReader | None = None
        while True:
            try:
                async with self.engine.connect() as conn:
                    while True:
                        await self._sleep(POLL_INTERVAL_S)
                        if not active():
                            reader = None
                            continue
                        if reader is None:
                            reader = await self._reader(conn)
                        reader.position = max(reader.position, self.hub.position)
                        events = await reader.poll(conn)
                        late = await reader.late(conn)
                        if events or late:
                            self.hub.deliver(events, late)
                            self._wake.set()  # there may be more
            except (DBAPIError, OSError) as error:
                log.warning("outbox follower lost the database", extra={"error": repr(error)})
                await asyncio.sleep(1)


@dataclass
class RedisBus(LocalBus):
    redis_url: str = ""
    prefix: str = "traitortrack"
    leader: bool = False
    up: bool = False
    reconnects: int = 0
    _last_message: float = 0.0

    @property
    def channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def status(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "up": self.up,
            "leader": self.leader,
            "reconnects": self.reconnects,
        }

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_message = loop.time()
        self._tasks += [
            asyncio.create_task(self._subscribe()),
            asyncio.create_task(self._lead()),
            asyncio.create_task(self._follow_outbox(self._degraded)),
        ]
        self._start_settling(self.settling)

    def _degraded(self) -> bool:
        """Redis has been silent too long (the leader beats every second): follow the outbox."""
        return asyncio.get_running_loop().time() - self._last_message > DEGRADED_AFTER_S

    async def _subscribe(self) -> None:
        delay = 0.1
        while True:
            client = Redis.from_url(self.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.up, delay = True, 0.1
                    log.info("subscribed to the event channel", extra={"channel": self.channel})
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._last_message = asyncio.get_running_loop().time()
                            await self._apply(json.loads(message["data"]))
            except (RedisError, OSError) as error:
                log.warning("event channel lost; reconnecting", extra={"error": repr(error)})
            finally:
                self.up = False
                await client.aclose()
            self.reconnects += 1
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)

    async def _apply(self, batch: dict[str, Any]) -> None:
        previous: int = batch["prev"]
        if previous > self.hub.position:
            # Missed batches (Redis blip, or this worker started late): read them, in order, and
            # those the relay passed still in flight as they commit.
            async with self.engine.connect() as connection:
                conn = await connection.execution_options(isolation_level="REPEATABLE READ")
                missed = await events_between(
                    conn, self.hub.position, previous, None, CATCH_UP_LIMIT
                )
                settling = Settling(previous, await current_snapshot(conn))
            self.hub.deliver(missed)
            self.hub.position = max(self.hub.position, previous)
            self._start_settling(settling)
        self.hub.deliver(
            (Event(**e) for e in batch["events"]), (Event(**e) for e in batch.get("late", ()))
        )

    async def _lead(self) -> None:
        """Whoever holds the advisory lock publishes the outbox; the others wait their turn."""
        while True:
            try:
                async with self.engine.connect() as conn:
                    await self._lead_with(conn)
            except (DBAPIError, OSError) as error:
                log.warning("relay lost the database", extra={"error": repr(error)})
            finally:
                self.leader = False
            await asyncio.sleep(1 + random.random())

    async def _lead_with(self, conn: AsyncConnection) -> None:
        lock = text("SELECT pg_try_advisory_lock(:key)")
        while not (await conn.execute(lock, {"key": LEADER_LOCK_KEY})).scalar_one():
            await conn.commit()
            await asyncio.sleep(2 + random.random())
        await conn.commit()
        self.leader = True
        log.info("this worker now relays the outbox to Redis")
        reader = await self._reader(conn)
        publisher = Redis.from_url(self.redis_url)
        last_beat = 0.0
        try:
            while True:
                await self._sleep(POLL_INTERVAL_S)
                previous = reader.position
                events = await reader.poll(conn)
                late = await reader.late(conn)
                now = asyncio.get_running_loop().time()
                if events or late or now - last_beat > HEARTBEAT_S:
                    last_beat = now
                    await self._publish(publisher, previous, events, late)
                    if events:
                        self._wake.set()
        finally:
            await publisher.aclose()

    async def _publish(
        self, publisher: Redis, previous: int, events: list[Event], late: list[Event]
    ) -> None:
        message = json.dumps(
            {
                "prev": previous,
                "events": [e.to_json() for e in events],
                "late": [e.to_json() for e in late],
            },
            default=str,
        )
        # On failure followers catch up from the outbox when Redis is back (they see the gap).
        with contextlib.suppress(RedisError, OSError):
            await publisher.publish(self.channel, message)
