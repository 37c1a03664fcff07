"""Reading the events outbox in id order, exactly once, without skipping late commits.

Ids come from a sequence: handed out at insert, visible at commit. So id 101 can be visible
while 100 is still in flight, and a rolled-back transaction leaves a hole forever. The reader
delivers ids strictly in order: at a hole it waits until every transaction that was running
when the hole was first seen has ended (``pg_snapshot_xmin`` has passed that snapshot's
``xmax``); if the id is still missing then, it never will be, and the reader moves past it.

A reader (or a hub) that starts at the newest id cannot see ids below it that are still in
flight: ``Settling`` finds those by transaction (``event.xid``) once they commit.

A client that resumes from an id may likewise have passed ids still in flight then:
``replay_after`` replays from the lowest id of the transactions that were running when the event
at its cursor was written (each event keeps its writing snapshot), so whatever committed late is
replayed too, with some events the client has (it ignores ids it applied).
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
# Transactions begun just after a snapshot still searched: an INSERT takes its id a moment before
# its xid, so a snapshot can fall between the two (microseconds apart).
XID_SLACK = 16
# A snapshot's xmax is the newest *finished* xid + 1, and transactions above it that had begun
# are not listed: of an event's writer snapshot, this many xids from xmax on are searched (more
# than the transactions a site has running at once).
XID_SPAN = 512
# Transactions open longer than this (anywhere on the server) are not waited for, as skipped ids.
SETTLE_S = 300.0

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


# Events at or below :position of transactions still running in :since (none of them visible in
# it), or begun just after it, and whether all of those have ended, as of one snapshot.
_SETTLING = text(
    """
    SELECT pg_snapshot_xmin(pg_current_snapshot()) >= pg_snapshot_xmax(s.since) AS done,
           e.id, e.kind, e.area, e.payload, e.at
    FROM (SELECT CAST(CAST(:since AS text) AS pg_snapshot) AS since) AS s
    LEFT JOIN LATERAL (
        SELECT e.id, e.kind, e.area, e.payload, e.at
        FROM (
            SELECT pg_snapshot_xip(s.since)::text::bigint AS xid
            UNION ALL
            SELECT generate_series(pg_snapshot_xmax(s.since)::text::bigint,
                                   pg_snapshot_xmax(s.since)::text::bigint + :slack - 1)
        ) AS running
        CROSS JOIN LATERAL (  -- a probe of ix_event_xid per transaction (OFFSET 0: not a join)
            SELECT id, kind, area, payload, at FROM event
            WHERE xid = running.xid AND id <= :position
            OFFSET 0
        ) AS e
    ) AS e ON true
    ORDER BY e.id
    """
)

# The lowest id below :after of a transaction still running when the event at :after (the newest
# at or below it) was written: one probe of ix_event_xid per transaction its snapshot lists, and
# per xid of the :span from its xmax on (running unlisted, or begun just after).
_REPLAY_FLOOR = text(
    """
    SELECT least(
        (SELECT min(first.id)
         FROM pg_snapshot_xip(cursor.snapshot) AS running(xid)
         CROSS JOIN LATERAL (
             SELECT id FROM event
             WHERE xid = running.xid::text::bigint AND id < :after ORDER BY id LIMIT 1
         ) AS first),
        (SELECT min(first.id)  -- probes, never a walk along ids
         FROM generate_series(0, :span - 1) AS step
         CROSS JOIN LATERAL (
             SELECT id FROM event
             WHERE xid = pg_snapshot_xmax(cursor.snapshot)::text::bigint + step AND id < :after
             ORDER BY id LIMIT 1
         ) AS first)
    )
    FROM (
        SELECT CAST(snapshot AS pg_snapshot) AS snapshot FROM event
        WHERE id <= :after ORDER BY id DESC LIMIT 1
    ) AS cursor
    """
)

# The snapshot of the transaction, with its xmax raised to an xid taken now (so every transaction
# it counts as running is listed, not only those below the newest finished one).
_SNAPSHOT = text(
    """
    WITH now AS MATERIALIZED (
        SELECT pg_current_snapshot() AS snapshot, pg_current_xact_id()::text::bigint AS xid
    )
    SELECT pg_snapshot_xmin(snapshot)::text || ':' || xid || ':' || coalesce((
        SELECT string_agg(running::text, ',' ORDER BY running)
        FROM (
            SELECT pg_snapshot_xip(snapshot)::text::bigint AS running
            UNION ALL
            SELECT generate_series(pg_snapshot_xmax(snapshot)::text::bigint, xid - 1)
        ) AS listed
    ), '')
    FROM now
    """
)


def to_event(row: Any) -> Event:
    return Event(row.id, row.kind, row.at.isoformat(), row.area, row.payload)


async def newest_id(conn: AsyncConnection) -> int:
    return (await conn.execute(text("SELECT coalesce(max(id), 0) FROM event"))).scalar_one()


async def current_snapshot(conn: AsyncConnection) -> str:
    """The snapshot ``conn``'s transaction reads in (``pg_snapshot`` text), listing every
    transaction it counts as running. (It takes an xid for ``conn``'s transaction.)"""
    return (await conn.execute(_SNAPSHOT)).scalar_one()


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


async def replay_floor(conn: AsyncConnection, after: int) -> int:
    """Where to replay from for a client whose cursor is ``after``: below every id under it that
    may have committed after the event at ``after`` did."""
    low = (await conn.execute(_REPLAY_FLOOR, {"after": after, "span": XID_SPAN})).scalar()
    return after if low is None else low - 1


@dataclass(frozen=True, slots=True)
class Missed:
    events: list[Event]  # in id order
    more: bool  # there are more than ``limit`` after the cursor


async def replay_after(
    conn: AsyncConnection, after: int, upto: int, areas: list[str] | None, limit: int
) -> Missed | None:
    """What a client whose cursor is ``after`` may have missed, up to ``upto``, of what ``areas``
    may see (None: all): the events at or below ``after`` that may have committed after it passed
    them (it ignores those it applied), then at most ``limit`` after it. None: it is too far
    behind (its events were dropped, or more than ``limit`` may have committed late): it must
    reload."""
    if after < await oldest_id(conn) - 1:
        return None
    floor = await replay_floor(conn, after)
    overlap = await events_between(conn, floor, min(after, upto), areas, limit + 1)
    if len(overlap) > limit:
        return None
    forward = await events_between(conn, after, upto, areas, limit + 1)
    return Missed([*overlap, *forward[:limit]], len(forward) > limit)


@dataclass
class Settling:
    """The events at or below ``position`` still in flight in ``snapshot``, to deliver as they
    commit: whoever starts following the outbox from ``position`` (a hub whose counters were read
    in ``snapshot``, a new relay) would otherwise never see them. Each is returned once; ``done``
    once every transaction running in ``snapshot`` has ended, or after ``SETTLE_S``."""

    position: int
    snapshot: str
    done: bool = False
    clock: Callable[[], float] = time.monotonic
    _delivered: set[int] = field(default_factory=set)
    _until: float = field(init=False)

    def __post_init__(self) -> None:
        self._until = self.clock() + SETTLE_S

    async def poll(self, conn: AsyncConnection) -> list[Event]:
        params = {"since": self.snapshot, "position": self.position, "slack": XID_SLACK}
        rows = (await conn.execute(_SETTLING, params)).all()
        await conn.rollback()
        self.done = rows[0].done or self.clock() > self._until
        fresh = [
            to_event(row) for row in rows if row.id is not None and row.id not in self._delivered
        ]
        self._delivered.update(event.id for event in fresh)
        return fresh


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
    settling: Settling | None = None  # ids below ``position`` in flight when it started
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
        """Ids below ``position`` that committed after all: skipped ones, and those in flight
        when the reader started (deliver them as they are)."""
        late = await self._settle(conn)
        now = self.clock()
        # Ids were added in time order: the ones watched long enough are at the front.
        while self._skipped and now - next(iter(self._skipped.values())) >= self.watch_s:
            del self._skipped[next(iter(self._skipped))]
        if not self._skipped:
            return late
        rows = await conn.execute(_LATE, {"ids": list(self._skipped)})
        skipped = [to_event(row) for row in rows]
        for event in skipped:
            del self._skipped[event.id]
        await conn.rollback()
        return sorted([*late, *skipped], key=lambda e: e.id)

    async def _settle(self, conn: AsyncConnection) -> list[Event]:
        if self.settling is None:
            return []
        late = await self.settling.poll(conn)
        if self.settling.done:
            self.settling = None
        return late
