"""Figures for the wall displays and ``/api/v1/stats``, from indexed reads only.

Today's counters and scans per minute come from the hub's memory (see ``realtime.counters``);
what is read here is small: bills by status (an index on status) and the latest scan events
(a backward walk of the events' primary key, bounded so an idle area cannot make it long).
"""

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.domain.events import Event
from traitortrack.realtime.outbox import to_event
from traitortrack.realtime.rates import SCAN_KINDS

FEED_LENGTH = 30
FEED_LOOKBACK = 20_000  # events: the feed shows scans among the latest this many
FEED_KINDS = sorted(SCAN_KINDS | {"child.unlinked", "parent.completed"})

_BILLS = text("SELECT status, count(*) AS n FROM bill GROUP BY status")

_LATEST_SCANS = text(
    """
    SELECT id, kind, area, payload, at FROM event
    WHERE id <= :upto AND id > :upto - :lookback
      AND kind = ANY(CAST(:kinds AS text[]))
      AND (CAST(:areas AS text[]) IS NULL OR area = ANY(CAST(:areas AS text[])))
    ORDER BY id DESC LIMIT :limit
    """
)


async def wall_figures(
    engine: AsyncEngine, upto: int, areas: frozenset[str] | None
) -> dict[str, Any]:
    """Bills by status (for viewers of every area: bills are not bound to one), and the feed's
    latest scans up to event ``upto`` (oldest first)."""
    async with engine.connect() as conn:
        bills = {row.status: row.n for row in await conn.execute(_BILLS)} if areas is None else None
        rows = await conn.execute(
            _LATEST_SCANS,
            {
                "upto": upto,
                "lookback": FEED_LOOKBACK,
                "kinds": FEED_KINDS,
                "areas": sorted(areas) if areas is not None else None,
                "limit": FEED_LENGTH,
            },
        )
        feed: list[Event] = [to_event(row) for row in rows]
    return {
        "bills": None
        if bills is None
        else {status: bills.get(status, 0) for status in ("new", "processing", "completed")},
        "feed": [e.to_json() for e in reversed(feed)],
    }
