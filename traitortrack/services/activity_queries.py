"""User activity (SPEC §7): what each person scanned, per UTC day, from the scan records.

Every command a person sends is one ``scan`` row (parent scans, child links, undos, bill
changes), refusals included. The report counts them per user and day, reading a few days at a
time through ``ix_scan_created`` so that a year's export never holds more than a week in memory.
"""

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.db.models import Scan, User
from traitortrack.services.lists import Problems, day_arg, midnight, text_arg

WINDOW_DAYS = 7
BILL_ACTIONS = (
    "create_bill",
    "edit_bill",
    "link_bill_parent",
    "remove_bill_parent",
    "complete_bill",
    "reopen_bill",
    "delete_bill",
)


@dataclass(frozen=True, slots=True)
class ActivityFilter:
    since: date | None = None
    until: date | None = None
    username: str = ""
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: Mapping[str, Any]) -> "ActivityFilter":
        problems = Problems()
        since, until = day_arg(args, "since", problems), day_arg(args, "until", problems)
        if since and until and since > until:
            problems.append("The 'from' date is after the 'to' date: swap them.")
        return cls(since, until, text_arg(args, "user", 64), tuple(problems))


@dataclass(frozen=True, slots=True)
class ActivityRow:
    day: date
    username: str | None  # None: the account was deleted since
    role: str | None
    area: str | None
    parents_scanned: int
    children_linked: int
    undos: int
    bill_changes: int
    duplicates: int
    rejected: int
    total: int


def _counts() -> list[Any]:
    ok = Scan.outcome == "ok"
    return [
        func.count().filter(Scan.action == "scan_parent", ok),
        func.count().filter(Scan.action == "link_child", ok),
        func.count().filter(Scan.action == "undo", ok),
        func.count().filter(Scan.action.in_(BILL_ACTIONS), ok),
        func.count().filter(Scan.outcome == "duplicate"),
        func.count().filter(Scan.outcome == "rejected"),
        func.count(),
    ]


async def activity_batches(
    engine: AsyncEngine, where: ActivityFilter, today: date
) -> AsyncIterator[list[ActivityRow]]:
    """Rows by day, then username; one query per ``WINDOW_DAYS`` days."""
    async with engine.connect() as conn:
        first = where.since
        if first is None:
            oldest = (await conn.execute(select(func.min(Scan.created_at)))).scalar()
            if oldest is None:
                return
            first = oldest.date()
        person = None
        if where.username:
            person = (
                await conn.execute(
                    select(User.id).where(func.lower(User.username) == where.username.lower())
                )
            ).scalar()
            if person is None:
                return
    last = where.until or today
    day = func.date(func.timezone("UTC", Scan.created_at)).label("day")
    start = first
    while start <= last:
        end = min(start + timedelta(days=WINDOW_DAYS), last + timedelta(days=1))
        statement = (
            select(day, User.username, User.role, User.area, *_counts())
            .select_from(Scan)
            .outerjoin(User, User.id == Scan.user_id)
            .where(Scan.created_at >= midnight(start), Scan.created_at < midnight(end))
            .group_by(day, Scan.user_id, User.username, User.role, User.area)
            .order_by(day, User.username)
        )
        if person is not None:
            statement = statement.where(Scan.user_id == person)
        async with engine.connect() as conn:
            rows = [ActivityRow(*row) for row in await conn.execute(statement)]
        if rows:
            yield rows
        start = end
