"""Reading the events outbox in id order, exactly once, without skipping late commits.

Ids come from a sequence: handed out at insert, visible at commit. So id 101 can be visible
while 100 is still in flight, and a rolled-back transaction leaves a hole forever. The reader
delivers ids strictly in order: at a hole it waits until every transaction that was running
when the hole was first seen has ended (``pg_snapshot_xmin`` has passed that snapshot's
``xmax``); if the id is still missing then, it never will be, and the reader moves past it.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from traitortrack.domain.events import Event

BATCH = 500
# Of a hole, the ids watched for a late commit at each end: a hole wider than this is a jump of
# the sequence (setval, a restore), and only ids next to ones handed out can still commit.
HOLE_EDGE = 1_000
MAX_WATCHED = 10_000  # skipped ids watched at once (the oldest are let go first)

_POLL = text(
    """
    SELECT s.xmin, s.xmax, e.id, e.kind, e.area, e.payload, e.at
    FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
                 pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) AS s
    LEFT JOIN LATERAL (
        SELECT id, kind, area, payload, at FROM event WHERE id > :after ORDER BY id LIMIT :limit
    ) AS e ON true
    """
)

_RANGE = text(
    """
    SELECT id, kind, area, payload, at FROM event
    WHERE id > :after AND id <= :upto
      AND (CAST(:areas AS text[]) IS NULL OR area = ANY(CAST(:areas AS text[])))
    ORDER BY id LIMIT :limit
    """
)


_LATE = text(
    "SELECT id, kind, area, payload, at FROM event"
    " WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id"
)


def to_event(row: Any) -> Event:
    return Event(row.id, row.kind, row.at.isoformat(), row.area, row.payload)


async def newest_id(conn: AsyncConnection) -> int:
    return (await conn.execute(text("SELECT coalesce(max(id), 0) FROM event"))).scalar_one()


async def oldest_id(conn: AsyncConnection) -> int:
    return (await conn.execute(text("SELECT coalesce(min(id), 0) FROM event"))).scalar_one()


async def events_between(
    conn: AsyncConnection, after: int, upto: int, areas: list[str] | None, limit: int
) -> list[Event]:
    """Committed events in (after, upto], those visible to ``areas`` (None: all), in id order."""
    rows = await conn.execute(
        _RANGE, {"after": after, "upto": upto, "areas": areas, "limit": limit}
    )
    return [to_event(row) for row in rows]


@dataclass
class OutboxReader:
    """Follows the outbox from ``position`` (the last id delivered).

    The snapshot rule is exact but waits for every transaction older than the hole, so one long
    unrelated transaction (a report, a backup) would stall delivery. After ``grace_s`` the reader
    moves on anyway and keeps watching the skipped ids: one that commits after all is delivered
    late (clients deduplicate by id), never lost.
    """

    position: int
    grace_s: float = 3.0
    watch_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _hole: tuple[int, int, float] | None = None  # (first missing id, xmax then, seen at)
    _skipped: dict[int, float] = field(default_factory=dict)

    async def poll(self, conn: AsyncConnection, limit: int = BATCH) -> list[Event]:
        """The next events in id order (all after the previous ``position``)."""
        rows = (await conn.execute(_POLL, {"after": self.position, "limit": limit})).all()
        xmin, xmax = rows[0].xmin, rows[0].xmax
        now = self.clock()
        ready: list[Event] = []
        for row in rows:
            if row.id is None:
                break
            if row.id != self.position + 1:
                missing = self.position + 1
                if self._hole is None or self._hole[0] != missing:
                    self._hole = (missing, xmax, now)
                    break
                if xmin < self._hole[1] and now - self._hole[2] < self.grace_s:
                    break  # a transaction that may still fill the hole is running
                self._watch(missing, row.id, now)
            self._hole = None
            ready.append(to_event(row))
            self.position = row.id
        await conn.rollback()
        return ready

    def _watch(self, first: int, end: int, now: float) -> None:
        """Keep an eye on the skipped ids ``first`` up to ``end`` (bounded in number)."""
        ids: Iterable[int] = range(first, end)
        if end - first > 2 * HOLE_EDGE:
            ids = chain(range(first, first + HOLE_EDGE), range(end - HOLE_EDGE, end))
        self._skipped.update(dict.fromkeys(ids, now))
        while len(self._skipped) > MAX_WATCHED:
            del self._skipped[next(iter(self._skipped))]

    async def late(self, conn: AsyncConnection) -> list[Event]:
        """Skipped ids that committed after all (below ``position``: deliver them as they are)."""
        now = self.clock()
        # Ids were added in time order: the ones watched long enough are at the front.
        while self._skipped and now - next(iter(self._skipped.values())) >= self.watch_s:
            del self._skipped[next(iter(self._skipped))]
        if not self._skipped:
            return []
        rows = await conn.execute(_LATE, {"ids": list(self._skipped)})
        late = [to_event(row) for row in rows]
        for event in late:
            del self._skipped[event.id]
        await conn.rollback()
        return late
