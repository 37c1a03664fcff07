"""Scans per minute per dispatch area over the last hour, kept in memory from the event stream.

For the wall displays' sparklines. A scan is a ``parent.scanned`` or ``child.linked`` event
(refusals write no event), counted in the minute of its ``at``. Seeded from the indexed events
table at start-up, like the day's counters; at most 61 minutes are kept.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from traitortrack.domain.events import Event, EventKind

MINUTES = 60
NO_AREA = "-"
SCAN_KINDS = frozenset({EventKind.PARENT_SCANNED.value, EventKind.CHILD_LINKED.value})

_COUNT_LAST_HOUR = text(
    """
    SELECT floor(extract(epoch FROM at) / 60)::bigint AS minute, coalesce(area, '-') AS area,
           count(*) AS n
    FROM event WHERE at >= :since AND kind = ANY(CAST(:kinds AS text[]))
    GROUP BY 1, 2
    """
)


def minute_of(moment: datetime) -> int:
    return int(moment.timestamp() // 60)


@dataclass
class ScanRates:
    by_minute: dict[int, Counter[str]] = field(default_factory=dict)

    async def recount(self, conn: AsyncConnection, now: datetime) -> None:
        since = now - timedelta(minutes=MINUTES + 1)
        rows = await conn.execute(_COUNT_LAST_HOUR, {"since": since, "kinds": sorted(SCAN_KINDS)})
        counts: dict[int, Counter[str]] = {}
        for row in rows:
            counts.setdefault(row.minute, Counter())[row.area] += row.n
        self.by_minute = counts

    def apply(self, event: Event) -> None:
        if event.kind not in SCAN_KINDS:
            return
        minute = minute_of(datetime.fromisoformat(event.at))
        found = self.by_minute.get(minute)
        if found is None:
            found = self.by_minute[minute] = Counter()
            for old in [m for m in self.by_minute if m <= minute - MINUTES - 1]:
                del self.by_minute[old]
        found[event.area or NO_AREA] += 1

    def series(self, areas: frozenset[str] | None, now: datetime) -> dict[str, Any]:
        """Per area (those in ``areas``; None: all), the counts of the last 60 minutes, oldest
        first; the last one is the minute under way."""
        last = minute_of(now)
        minutes = range(last - MINUTES + 1, last + 1)
        seen = {a for m in minutes for a in self.by_minute.get(m, ())}
        visible = sorted(a for a in seen if areas is None or a in areas)
        return {
            "last_minute": last,
            "areas": {
                area: [self.by_minute.get(m, Counter())[area] for m in minutes] for area in visible
            },
        }
