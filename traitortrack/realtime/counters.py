"""Today's live counters per dispatch area, kept in memory from the event stream.

No database row is updated per scan (ARCHITECTURE.md, "No hot rows"): each worker counts the
events it delivers, starting from a snapshot counted out of the indexed events table, and
recounts now and then to reconcile.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from traitortrack.domain.events import Event, EventKind
from traitortrack.realtime.rates import ScanRates

FIELDS = ("parents", "children", "completed", "bills_created", "bills_completed")
NO_AREA = "-"

_COUNT_TODAY = text(
    """
    SELECT kind, coalesce(area, '-') AS area, count(*) AS n,
           count(*) FILTER (WHERE (payload->>'created')::boolean) AS created
    FROM event WHERE at >= :since GROUP BY kind, area
    """
)


def _delta(event_kind: str, data: dict[str, Any]) -> tuple[str, int] | None:
    match event_kind:
        case EventKind.PARENT_SCANNED if data.get("created"):
            return "parents", 1
        case EventKind.CHILD_LINKED:
            return "children", 1
        case EventKind.CHILD_UNLINKED:
            return "children", -1
        case EventKind.PARENT_COMPLETED:
            return "completed", 1
        case EventKind.BILL_CREATED:
            return "bills_created", 1
        case EventKind.BILL_COMPLETED:
            return "bills_completed", 1
    return None


@dataclass
class LiveCounters:
    zone: ZoneInfo
    day: datetime
    by_area: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(_zeroes))
    # Scans per minute of the last hour (wall sparklines), from the same events.
    rates: ScanRates = field(default_factory=ScanRates)

    @classmethod
    def starting(cls, zone: ZoneInfo, now: datetime) -> "LiveCounters":
        return cls(zone, _midnight(now, zone))

    async def recount(self, conn: AsyncConnection, now: datetime) -> None:
        self.day = _midnight(now, self.zone)
        counts: dict[str, dict[str, int]] = defaultdict(_zeroes)
        for row in await conn.execute(_COUNT_TODAY, {"since": self.day}):
            if row.kind == EventKind.PARENT_SCANNED:
                counts[row.area]["parents"] += row.created
            elif (found := _delta(row.kind, {})) is not None:
                name, sign = found
                counts[row.area][name] += sign * row.n
        self.by_area = counts
        await self.rates.recount(conn, now)

    def apply(self, event: Event, now: datetime) -> str | None:
        """Count one event; returns the area it changed, if any."""
        self.rates.apply(event)
        if _midnight(now, self.zone) != self.day:
            self.day = _midnight(now, self.zone)
            self.by_area = defaultdict(_zeroes)
        found = _delta(event.kind, event.data)
        if found is None:
            return None
        area = event.area or NO_AREA
        self.by_area[area][found[0]] += found[1]
        return area

    def snapshot(self, areas: frozenset[str] | None) -> dict[str, Any]:
        """Counters as a client in ``areas`` (None: all) may see them."""
        visible = {
            area: dict(values)
            for area, values in self.by_area.items()
            if areas is None or area in areas
        }
        total = {name: sum(v[name] for v in visible.values()) for name in FIELDS}
        return {"day": self.day.date().isoformat(), "total": total, "areas": visible}


def _zeroes() -> dict[str, int]:
    return dict.fromkeys(FIELDS, 0)


def _midnight(now: datetime, zone: ZoneInfo) -> datetime:
    return datetime.combine(now.astimezone(zone).date(), time(), tzinfo=zone)
