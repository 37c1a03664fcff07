"""The events outbox's retention: ``event`` is range-partitioned by id, so it never grows without
bound and no query on it slows down as the years pass.

Partitions cover consecutive id ranges (``PARTITION_IDS`` wide) and live in their own schema,
``event_partitions``, out of the way of the models' schema. A maintenance job, run by one worker
at a time, keeps ``AHEAD`` empty partitions beyond the id sequence (an insert with no partition
for its id would fail, so the seeder and the migration make room too) and drops every partition
whose rows are all older than the retention period. Dropping a partition is instant, unlike a
DELETE of millions of rows, and leaves no dead tuples to vacuum.

Ids, not times, key the partitions: every outbox read is by id (replay, the relay, the wall
feed), so each touches one or two partitions. A client resuming from an id below the oldest
kept one is told to resync (``web.ws``), exactly as if it had fallen too far behind.
"""

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.tasks import stop_tasks

log = logging.getLogger(__name__)

SCHEMA = "event_partitions"
PARTITION_IDS = 4_000_000  # about seven hours of scanning at 500 scans/s; weeks at a quiet site
AHEAD = 2
MAINTAIN_EVERY_S = 300.0
# Dropping a partition briefly locks ``event``: never queue the scan path behind a long reader.
LOCK_TIMEOUT = "200ms"
# Any constant shared by all workers; spells "ttevent" in ASCII.
RETENTION_LOCK_KEY = 0x74746576656E74
_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")

PARTITIONS_SQL = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'public.event'::regclass
"""
LAST_ID_SQL = "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('event', 'id')), 0)"


@dataclass(frozen=True, order=True)
class Partition:
    lower: int
    upper: int  # exclusive
    name: str = field(compare=False)

    @property
    def table(self) -> str:
        return f'{SCHEMA}."{self.name}"'


def partition_ddl(lower: int, upper: int) -> list[str]:
    """Create the partition for ids [lower, upper): built apart, then attached, because attaching
    takes a lock that lets scans carry on (``CREATE TABLE ... PARTITION OF`` would block them)."""
    table = f'{SCHEMA}."from_{lower}"'
    return [
        f"CREATE TABLE {table} (LIKE public.event INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
        f"ALTER TABLE public.event ATTACH PARTITION {table} FOR VALUES FROM ({lower}) TO ({upper})",
    ]


def to_partitions(rows: list[tuple[str, str]]) -> list[Partition]:
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound)
        if match is None:
            raise RuntimeError(f"event partition {name} has an unexpected bound: {bound}")
        found.append(Partition(int(match[1]), int(match[2]), name))
    return sorted(found)


async def partitions(conn: AsyncConnection) -> list[Partition]:
    rows = await conn.execute(text(PARTITIONS_SQL))
    return to_partitions([(row.name, row.bound) for row in rows])


async def last_id(conn: AsyncConnection) -> int:
    """The last id the sequence handed out (committed or not)."""
    return (await conn.execute(text(LAST_ID_SQL))).scalar_one()


@dataclass(frozen=True)
class Maintenance:
    created: list[Partition]
    dropped: list[Partition]
    skipped: bool = False  # another worker was maintaining


async def make_room(conn: AsyncConnection, extra_ids: int = 0) -> list[Partition]:
    """Partitions for ``extra_ids`` more ids and ``AHEAD`` empty ones beyond; in the caller's
    transaction, which should hold the retention lock."""
    existing = await partitions(conn)
    top = existing[-1].upper if existing else 0
    wanted = await last_id(conn) + extra_ids + AHEAD * PARTITION_IDS
    created = []
    while top < wanted:
        for statement in partition_ddl(top, top + PARTITION_IDS):
            await conn.execute(text(statement))
        created.append(Partition(top, top + PARTITION_IDS, f"from_{top}"))
        top += PARTITION_IDS
    return created


async def reserve_ids(engine: AsyncEngine, extra_ids: int) -> list[Partition]:
    """Partitions for ``extra_ids`` more ids, for a bulk load (the job would not keep up)."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RETENTION_LOCK_KEY})
        return await make_room(conn, extra_ids)


async def drop_expired(conn: AsyncConnection, cut: datetime) -> list[Partition]:
    """Drop the partitions wholly below the id sequence whose newest event is older than ``cut``.

    Each is locked before its newest event is read, so no insert can land in it in between.
    """
    dropped = []
    below = await last_id(conn)
    for partition in await partitions(conn):
        if partition.upper > below:
            break
        await conn.execute(text(f"LOCK TABLE {partition.table} IN ACCESS EXCLUSIVE MODE"))
        newest = (await conn.execute(text(f"SELECT max(at) FROM {partition.table}"))).scalar()
        if newest is not None and newest >= cut:
            break  # ids grow with time: the later partitions are newer still
        await conn.execute(text(f"DROP TABLE {partition.table}"))
        dropped.append(partition)
    return dropped


async def maintain(engine: AsyncEngine, retention: timedelta, now: datetime) -> Maintenance:
    """One round of the job, in one transaction, skipped if another worker is in one."""
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        lock = text("SELECT pg_try_advisory_xact_lock(:key)")
        if not (await conn.execute(lock, {"key": RETENTION_LOCK_KEY})).scalar_one():
            return Maintenance([], [], skipped=True)
        created = await make_room(conn)
        return Maintenance(created, await drop_expired(conn, now - retention))


@dataclass
class EventRetention:
    """The worker's maintenance timer: a round at start, then every ``MAINTAIN_EVERY_S``."""

    task: asyncio.Task[None]

    @classmethod
    def start(
        cls, engine: AsyncEngine, retention: timedelta, clock: Callable[[], datetime]
    ) -> "EventRetention":
        return cls(asyncio.create_task(_run(engine, retention, clock)))

    async def stop(self) -> None:
        await stop_tasks(self.task)


async def _run(engine: AsyncEngine, retention: timedelta, clock: Callable[[], datetime]) -> None:
    while True:
        try:
            done = await maintain(engine, retention, clock())
            if done.created or done.dropped:
                log.info(
                    "event partitions maintained",
                    extra={
                        "partitions_created": [p.name for p in done.created],
                        "partitions_dropped": [p.name for p in done.dropped],
                    },
                )
        except (DBAPIError, OSError) as error:
            # A lock timeout or a lost database: the next round tries again.
            log.warning("event retention round failed", extra={"error": repr(error)})
        await asyncio.sleep(MAINTAIN_EVERY_S)
