"""Reading bags (SPEC §7): search with filters, keyset pages, one bag with its history.

Two orders, each served by an index so that any page is a short index range:

* a code (exact or prefix) given: by code, on the code's unique index (it is in the "C"
  collation, so a prefix is one range);
* otherwise newest first, by (created_at, id), on ``ix_bag_created_id`` or, within one
  dispatch area, ``ix_bag_area_created_id``.

Dispatchers see only their own area: callers pass it as ``only_area`` and it overrides any
area the filter asks for.
"""

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, not_, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from traitortrack.db.models import Bag, Bill, BillParent, Link, Scan, User
from traitortrack.services.lists import (
    BATCH_SIZE,
    PAGE_SIZE,
    Page,
    Problems,
    batches,
    choice_arg,
    day_arg,
    day_range,
    page_of,
    read_time_cursor,
    text_arg,
    time_cursor,
)

KINDS = ("parent", "child")
YES_NO = ("yes", "no")
MATCHES = ("prefix", "exact")
MAX_CODE = 100
CODE_CHARACTERS = re.compile(r"[A-Z0-9-]+")
HISTORY_SIZE = 100


@dataclass(frozen=True, slots=True)
class BagFilter:
    code: str = ""
    match: str = "prefix"  # or "exact"
    kind: str = ""
    area: str = ""
    linked: str = ""  # "yes": a child in a parent, or a parent holding children
    billed: str = ""  # "yes": a parent on a bill, or a child in such a parent
    since: date | None = None
    until: date | None = None
    scanned_by: str = ""  # the username that first scanned (registered) the bag
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: Mapping[str, Any]) -> "BagFilter":
        problems = Problems()
        code = text_arg(args, "code", MAX_CODE + 1).upper()
        if len(code) > MAX_CODE:
            problems.append(f"Codes are at most {MAX_CODE} characters: check what was typed.")
            code = ""
        elif code and not CODE_CHARACTERS.fullmatch(code):
            problems.append("Codes have only letters, digits and '-': check what was typed.")
            code = ""
        since, until = day_arg(args, "since", problems), day_arg(args, "until", problems)
        if since and until and since > until:
            problems.append("The 'from' date is after the 'to' date: swap them.")
        return cls(
            code=code,
            match=choice_arg(args, "match", MATCHES, problems, "Match") or "prefix",
            kind=choice_arg(args, "kind", KINDS, problems, "Type"),
            area=text_arg(args, "area", 40),
            linked=choice_arg(args, "linked", YES_NO, problems, "Linked"),
            billed=choice_arg(args, "billed", YES_NO, problems, "Billed"),
            since=since,
            until=until,
            scanned_by=text_arg(args, "scanned_by", 64),
            problems=tuple(problems),
        )

    def within(self, area: str | None) -> "BagFilter":
        """The filter as someone limited to ``area`` (a dispatcher) may run it."""
        return self if area is None else replace(self, area=area)

    @property
    def by_code(self) -> bool:
        return bool(self.code)

    def query_args(self) -> dict[str, str]:
        pairs = {
            "code": self.code,
            "match": self.match if self.code and self.match != "prefix" else "",
            "kind": self.kind,
            "area": self.area,
            "linked": self.linked,
            "billed": self.billed,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "scanned_by": self.scanned_by,
        }
        return {key: value for key, value in pairs.items() if value}


@dataclass(frozen=True, slots=True)
class BagRow:
    id: int
    code: str
    kind: str
    area: str | None
    status: str
    child_count: int
    created_at: datetime
    owner: str | None
    parent_code: str | None
    bill_id: int | None
    bill_number: str | None


def _bag_select() -> Select[Any]:
    parent = aliased(Bag)
    # A child's bill is its parent's: join bill_parent on the parent, or on the bag itself.
    billed_parent = func.coalesce(Link.parent_id, Bag.id)
    return (
        select(
            Bag.id,
            Bag.code,
            Bag.kind,
            Bag.area,
            Bag.status,
            Bag.child_count,
            Bag.created_at,
            User.username.label("owner"),
            parent.code.label("parent_code"),
            Bill.id.label("bill_id"),
            Bill.number.label("bill_number"),
        )
        .select_from(Bag)
        .outerjoin(User, User.id == Bag.owner_id)
        .outerjoin(Link, Link.child_id == Bag.id)
        .outerjoin(parent, parent.id == Link.parent_id)
        .outerjoin(BillParent, BillParent.parent_id == billed_parent)
        .outerjoin(Bill, Bill.id == BillParent.bill_id)
    )


def _conditions(where: BagFilter) -> list[Any]:
    conditions: list[Any] = []
    if where.code and where.match == "exact":
        conditions.append(Bag.code == where.code)
    elif where.code:
        # A range rather than LIKE: it stays an index range in a generic (prepared) plan too.
        upper = where.code[:-1] + chr(ord(where.code[-1]) + 1)
        conditions += [Bag.code >= where.code, Bag.code < upper]
    if where.kind:
        conditions.append(Bag.kind == where.kind)
    if where.area:
        conditions.append(Bag.area == where.area)
    if where.linked:
        held = aliased(Link)  # not the outer query's Link, which joins the bag as a child
        holds_children = exists().where(held.parent_id == Bag.id)
        in_parent = Link.child_id.is_not(None)
        linked = or_(
            and_(Bag.kind == "child", in_parent), and_(Bag.kind == "parent", holds_children)
        )
        conditions.append(linked if where.linked == "yes" else not_(linked))
    if where.billed:
        on_bill = BillParent.parent_id.is_not(None)
        conditions.append(on_bill if where.billed == "yes" else BillParent.parent_id.is_(None))
    start, end = day_range(where.since, where.until)
    if start is not None:
        conditions.append(Bag.created_at >= start)
    if end is not None:
        conditions.append(Bag.created_at < end)
    if where.scanned_by:
        owner = select(User.id).where(func.lower(User.username) == where.scanned_by.lower())
        conditions.append(Bag.owner_id == owner.scalar_subquery())
    return conditions


def _bag_cursor(row: BagRow, by_code: bool) -> str:
    return row.code if by_code else time_cursor(row.created_at, row.id)


async def search_bags(
    engine: AsyncEngine,
    where: BagFilter,
    after: str | None = None,
    size: int = PAGE_SIZE,
) -> Page[BagRow]:
    statement = _bag_select().where(*_conditions(where))
    if where.by_code:
        if after and CODE_CHARACTERS.fullmatch(after):
            statement = statement.where(Bag.code > after)
        statement = statement.order_by(Bag.code)
    else:
        if (position := read_time_cursor(after)) is not None:
            statement = statement.where(tuple_(Bag.created_at, Bag.id) < tuple_(*position))
        statement = statement.order_by(Bag.created_at.desc(), Bag.id.desc())
    async with engine.connect() as conn:
        rows = [BagRow(*row) for row in await conn.execute(statement.limit(size + 1))]
    return page_of(rows, size, lambda row: _bag_cursor(row, where.by_code))


def bag_batches(
    engine: AsyncEngine, where: BagFilter, size: int = BATCH_SIZE
) -> AsyncIterator[list[BagRow]]:
    return batches(lambda after: search_bags(engine, where, after, size))


@dataclass(frozen=True, slots=True)
class ChildEntry:
    code: str
    linked_at: datetime
    linked_by: str | None


@dataclass(frozen=True, slots=True)
class ScanEntry:
    at: datetime
    username: str | None
    action: str
    outcome: str
    message: str
    parent_code: str | None


@dataclass(frozen=True, slots=True)
class BagDetail:
    bag: BagRow
    children: list[ChildEntry]  # parents only, in the order they were linked
    scans: list[ScanEntry]  # newest first, at most HISTORY_SIZE


async def find_bag(engine: AsyncEngine, code: str, only_area: str | None) -> BagDetail | None:
    """One bag with its children and scan history; None if unknown or outside ``only_area``."""
    code = code.strip().upper()
    if len(code) > MAX_CODE or not CODE_CHARACTERS.fullmatch(code):
        return None
    async with engine.connect() as conn:
        found = (await conn.execute(_bag_select().where(Bag.code == code))).one_or_none()
        if found is None or (only_area is not None and found.area != only_area):
            return None
        bag = BagRow(*found)
        children = [
            ChildEntry(*row)
            for row in await conn.execute(
                select(Bag.code, Link.created_at, User.username)
                .select_from(Link)
                .join(Bag, Bag.id == Link.child_id)
                .outerjoin(User, User.id == Link.user_id)
                .where(Link.parent_id == bag.id)
                .order_by(Link.created_at, Bag.code)
            )
        ]
        scans = [
            ScanEntry(*row)
            for row in await conn.execute(
                select(
                    Scan.created_at,
                    User.username,
                    Scan.action,
                    Scan.outcome,
                    Scan.message,
                    Scan.parent_code,
                )
                .outerjoin(User, User.id == Scan.user_id)
                .where(Scan.code == code)
                .order_by(Scan.created_at.desc())
                .limit(HISTORY_SIZE)
            )
        ]
    return BagDetail(bag, children, scans)
