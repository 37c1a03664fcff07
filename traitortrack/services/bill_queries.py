"""Reading bills (SPEC §3, §7): the list with status filter and number search, one bill with its
parent bags. Counts and weights are counted from the links on every read, never cached.

The list is newest first by (created_at, id) on ``ix_bill_created_id``; a number search lists by
number instead, on ``ix_bill_number_search`` (lower-cased, "C" order, so a prefix is a range).
"""

import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.models import Bag, Bill, BillParent, Link, User
from traitortrack.domain.bills import MAX_NUMBER_LENGTH, BillStatus, BillTotals
from traitortrack.services.lists import (
    BATCH_SIZE,
    PAGE_SIZE,
    Page,
    Problems,
    batches,
    choice_arg,
    page_of,
    read_time_cursor,
    text_arg,
    time_cursor,
)

STATUSES = tuple(status.value for status in BillStatus)


def _number_key(value: Any) -> Any:
    """The search key: the lower-cased number in byte order, as ``ix_bill_number_search``."""
    return func.lower(value).collate("C")


@dataclass(frozen=True, slots=True)
class BillFilter:
    status: str = ""
    number: str = ""  # the bill number starts with this (any case)
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: Mapping[str, Any]) -> "BillFilter":
        problems = Problems()
        return cls(
            status=choice_arg(args, "status", STATUSES, problems, "Status"),
            number=text_arg(args, "number", MAX_NUMBER_LENGTH),
            problems=tuple(problems),
        )

    def query_args(self) -> dict[str, str]:
        pairs = {"status": self.status, "number": self.number}
        return {key: value for key, value in pairs.items() if value}


@dataclass(frozen=True, slots=True)
class BillRow:
    id: int
    number: str
    description: str
    capacity: int
    status: str
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    search_key: str
    linked: int = 0
    children: int = 0

    @property
    def totals(self) -> BillTotals:
        return BillTotals(self.capacity, self.linked, self.children)


def _bill_select() -> Select[Any]:
    return (
        select(
            Bill.id,
            Bill.number,
            Bill.description,
            Bill.capacity,
            Bill.status,
            Bill.created_at,
            Bill.updated_at,
            User.username.label("created_by"),
            _number_key(Bill.number).label("search_key"),
        )
        .select_from(Bill)
        .outerjoin(User, User.id == Bill.created_by)
    )


async def _with_totals(conn: AsyncConnection, rows: list[Any]) -> list[BillRow]:
    """Parents and child bags of each bill, counted from the links (one query per page)."""
    ids = [row.id for row in rows]
    counts: dict[int, tuple[int, int]] = {}
    if ids:
        counted = await conn.execute(
            select(
                BillParent.bill_id,
                func.count(func.distinct(BillParent.parent_id)),
                func.count(Link.child_id),
            )
            .outerjoin(Link, Link.parent_id == BillParent.parent_id)
            .where(BillParent.bill_id.in_(ids))
            .group_by(BillParent.bill_id)
        )
        counts = {bill_id: (linked, children) for bill_id, linked, children in counted}
    return [BillRow(*row, *counts.get(row.id, (0, 0))) for row in rows]


async def list_bills(
    engine: AsyncEngine, where: BillFilter, after: str | None = None, size: int = PAGE_SIZE
) -> Page[BillRow]:
    statement = _bill_select()
    if where.status:
        statement = statement.where(Bill.status == where.status)
    if where.number:
        # A range rather than LIKE: it stays an index range in a generic (prepared) plan too.
        low = where.number.lower()
        key = _number_key(Bill.number)
        # The key's explicit "C" collation wins over the parameters' default one.
        statement = statement.where(key >= low)
        if ord(low[-1]) < sys.maxunicode:
            statement = statement.where(key < low[:-1] + chr(ord(low[-1]) + 1))
        if after and after.isprintable():
            statement = statement.where(key > after)
        statement = statement.order_by(key)
    else:
        if (position := read_time_cursor(after)) is not None:
            statement = statement.where(tuple_(Bill.created_at, Bill.id) < tuple_(*position))
        statement = statement.order_by(Bill.created_at.desc(), Bill.id.desc())
    async with engine.connect() as conn:
        raw = list(await conn.execute(statement.limit(size + 1)))
        rows = await _with_totals(conn, raw)

    def cursor(row: BillRow) -> str:
        return row.search_key if where.number else time_cursor(row.created_at, row.id)

    return page_of(rows, size, cursor)


def bill_batches(
    engine: AsyncEngine, where: BillFilter, size: int = BATCH_SIZE
) -> AsyncIterator[list[BillRow]]:
    return batches(lambda after: list_bills(engine, where, after, size))


@dataclass(frozen=True, slots=True)
class BillParentRow:
    code: str
    area: str | None
    status: str
    children: int
    linked_at: datetime
    linked_by: str | None


@dataclass(frozen=True, slots=True)
class BillView:
    bill: BillRow
    parents: list[BillParentRow]  # in the order they were put on the bill

    @property
    def totals(self) -> BillTotals:
        return BillTotals(
            self.bill.capacity, len(self.parents), sum(p.children for p in self.parents)
        )


async def find_bill(engine: AsyncEngine, bill_id: int) -> BillView | None:
    children = (
        select(func.count()).select_from(Link).where(Link.parent_id == Bag.id).scalar_subquery()
    )
    async with engine.connect() as conn:
        row = (await conn.execute(_bill_select().where(Bill.id == bill_id))).one_or_none()
        if row is None:
            return None
        parents = [
            BillParentRow(*parent)
            for parent in await conn.execute(
                select(
                    Bag.code,
                    Bag.area,
                    Bag.status,
                    children,
                    BillParent.created_at,
                    User.username,
                )
                .select_from(BillParent)
                .join(Bag, Bag.id == BillParent.parent_id)
                .outerjoin(User, User.id == BillParent.user_id)
                .where(BillParent.bill_id == bill_id)
                .order_by(BillParent.created_at, Bag.code)
            )
        ]
    bill = BillRow(*row, len(parents), sum(p.children for p in parents))
    return BillView(bill, parents)


async def bill_id_for(engine: AsyncEngine, number: str) -> int | None:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(Bill.id).where(func.lower(Bill.number) == func.lower(number.strip()))
            )
        ).scalar_one_or_none()
