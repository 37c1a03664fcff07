"""Bill use cases (SPEC §3). Totals are always derived from the links, never cached."""

from collections.abc import Callable
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.models import Bag, Bill, BillParent
from traitortrack.domain import bills as rules
from traitortrack.domain.bills import BillStatus, BillTotals
from traitortrack.domain.events import EventKind, NewEvent, parent_json
from traitortrack.domain.outcomes import Outcome, RuleBroken
from traitortrack.domain.roles import Permission
from traitortrack.services.commands import (
    Actor,
    Answer,
    Command,
    Planned,
    Result,
    Tx,
    UseCase,
    require,
    run,
)
from traitortrack.services.scans import code_of


async def bill_totals(conn: AsyncConnection, bill_id: int, capacity: int) -> BillTotals:
    linked, children = (
        await conn.execute(
            select(func.count(BillParent.parent_id), func.coalesce(func.sum(Bag.child_count), 0))
            .select_from(BillParent)
            .join(Bag, Bag.id == BillParent.parent_id)
            .where(BillParent.bill_id == bill_id)
        )
    ).one()
    return BillTotals(capacity, linked, int(children))


def bill_json(row: Row[Any], totals: BillTotals, status: BillStatus | str) -> dict[str, Any]:
    return {
        "number": row.number,
        "description": row.description,
        "status": str(status),
        "capacity": totals.capacity,
        "linked": totals.linked,
        "children": totals.children,
        "actual_weight_kg": totals.actual_weight_kg,
        "expected_weight_kg": totals.expected_weight_kg,
    }


async def _lock_bill(tx: Tx, number: str) -> tuple[Row[Any], BillTotals]:
    row = (
        await tx.conn.execute(
            select(Bill.id, Bill.number, Bill.description, Bill.capacity, Bill.status)
            # lower() on both sides in SQL: Python's str.lower() differs from PostgreSQL's for
            # some letters ("İ", a final "Σ"), and the unique index uses PostgreSQL's.
            .where(func.lower(Bill.number) == func.lower(number))
            .with_for_update()
        )
    ).one_or_none()
    if row is None:
        raise rules.bill_not_found(number)
    return row, await bill_totals(tx.conn, row.id, row.capacity)


async def _save_status(tx: Tx, bill_id: int, status: BillStatus, **values: Any) -> None:
    await tx.conn.execute(
        update(Bill)
        .where(Bill.id == bill_id)
        .values(status=status.value, updated_at=func.now(), **values)
    )


def _bill_change(
    tx: Tx,
    action: str,
    kind: EventKind,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Audit a bill change and announce it; returns the answer's data."""
    tx.audit(action, "bill", after["number"], before, after)
    data = {"bill": after, **(extra or {})}
    tx.emit(NewEvent(kind, None, {**data, "by": tx.actor.username}))
    return data


async def _run_bill(
    engine: AsyncEngine,
    actor: Actor,
    client_id: object,
    action: str,
    number: object,
    make: Callable[[str], UseCase],
    permission: Permission = Permission.MANAGE_BILLS,
) -> Result:
    """The shape shared by every use case on an existing bill: check, normalise, lock, change."""

    def plan() -> Planned:
        require(actor, permission)
        bill_number = rules.normalize_bill_number(number)
        use_case: UseCase = make(bill_number)
        return Command(action, code=None, area=None), use_case

    return await run(engine, actor, client_id, plan)


async def create_bill(
    engine: AsyncEngine,
    actor: Actor,
    client_id: object,
    number: object,
    capacity: object,
    description: object = "",
) -> Result:
    def plan() -> Planned:
        require(actor, Permission.MANAGE_BILLS)
        bill_number = rules.normalize_bill_number(number)
        bill_capacity = rules.capacity_for_new_bill(capacity)
        text = rules.normalize_description(description)

        async def use_case(tx: Tx) -> Answer:
            row = (
                await tx.conn.execute(
                    pg_insert(Bill)
                    .values(
                        number=bill_number,
                        description=text,
                        capacity=bill_capacity,
                        created_by=actor.user_id,
                    )
                    .on_conflict_do_nothing(index_elements=[func.lower(Bill.number)])
                    .returning(Bill.id, Bill.number, Bill.description)
                )
            ).one_or_none()
            if row is None:
                raise rules.bill_exists(bill_number)
            totals = BillTotals(bill_capacity, 0, 0)
            after = bill_json(row, totals, BillStatus.NEW)
            data = _bill_change(tx, "bill.create", EventKind.BILL_CREATED, None, after)
            return Answer(Outcome.OK, f"Bill {bill_number} created (0/{bill_capacity})", data)

        return Command("create_bill", area=None), use_case

    return await run(engine, actor, client_id, plan)


async def edit_bill(
    engine: AsyncEngine,
    actor: Actor,
    client_id: object,
    number: object,
    *,
    capacity: object = None,
    description: object = None,
) -> Result:
    def make(bill_number: str) -> UseCase:
        text = None if description is None else rules.normalize_description(description)

        async def use_case(tx: Tx) -> Answer:
            row, totals = await _lock_bill(tx, bill_number)
            new_capacity = (
                row.capacity
                if capacity is None
                else rules.capacity_for_edit(capacity, totals.linked)
            )
            new_totals = BillTotals(new_capacity, totals.linked, totals.children)
            status = rules.status_after_change(new_totals, BillStatus(row.status))
            new_description = row.description if text is None else text
            await _save_status(
                tx, row.id, status, capacity=new_capacity, description=new_description
            )
            before = bill_json(row, totals, row.status)
            after = {**bill_json(row, new_totals, status), "description": new_description}
            data = _bill_change(tx, "bill.edit", EventKind.BILL_UPDATED, before, after)
            return Answer(Outcome.OK, f"Bill {row.number} saved ({new_totals.progress()})", data)

        return use_case

    return await _run_bill(engine, actor, client_id, "edit_bill", number, make)


async def link_bill_parent(
    engine: AsyncEngine, actor: Actor, client_id: object, number: object, parent_code: object
) -> Result:
    """Put a scanned parent bag on a bill."""

    def make(bill_number: str) -> UseCase:
        bag_code = code_of(parent_code, None)

        async def use_case(tx: Tx) -> Answer:
            row, totals = await _lock_bill(tx, bill_number)
            for _ in range(3):
                bag = await _parent_for_bill(tx.conn, bag_code)
                parent = parent_json(bag.code, bag.child_count, bag.status)
                if bag.bill_number is not None:
                    if bag.bill_number != row.number:
                        raise rules.parent_on_other_bill(bag_code, bag.bill_number)
                    data = {"bill": bill_json(row, totals, row.status), "parent": parent}
                    message = f"{bag_code} is already on bill {row.number} ({totals.progress()})"
                    return Answer(Outcome.DUPLICATE, message, data)
                rules.check_link_parent(totals, BillStatus(row.status), row.number)
                inserted = await tx.conn.execute(
                    pg_insert(BillParent)
                    .values(parent_id=bag.id, bill_id=row.id, user_id=actor.user_id)
                    .on_conflict_do_nothing(index_elements=[BillParent.parent_id])
                    .returning(BillParent.parent_id)
                )
                if inserted.first() is not None:
                    break
            else:
                raise RuleBroken("BUSY", f"{bag_code} is being billed elsewhere; scan it again.")
            after_totals = BillTotals(
                totals.capacity, totals.linked + 1, totals.children + bag.child_count
            )
            status = rules.status_after_change(after_totals, BillStatus(row.status))
            await _save_status(tx, row.id, status)
            before = bill_json(row, totals, row.status)
            after = bill_json(row, after_totals, status)
            data = _bill_change(
                tx, "bill.link_parent", EventKind.BILL_BAG_LINKED, before, after, {"parent": parent}
            )
            message = f"{bag_code} added to bill {row.number} ({after_totals.progress()})"
            return Answer(Outcome.OK, message, data)

        return use_case

    return await _run_bill(engine, actor, client_id, "link_bill_parent", number, make)


async def _parent_for_bill(conn: AsyncConnection, code: str) -> Row[Any]:
    row = (
        await conn.execute(
            select(
                Bag.id,
                Bag.code,
                Bag.kind,
                Bag.child_count,
                Bag.status,
                Bill.number.label("bill_number"),
            )
            .outerjoin(BillParent, BillParent.parent_id == Bag.id)
            .outerjoin(Bill, Bill.id == BillParent.bill_id)
            .where(Bag.code == code)
        )
    ).one_or_none()
    if row is None:
        raise rules.bag_not_registered(code)
    if row.kind != "parent":
        raise rules.bag_is_child(code)
    return row


async def remove_bill_parent(
    engine: AsyncEngine, actor: Actor, client_id: object, number: object, parent_code: object
) -> Result:
    def make(bill_number: str) -> UseCase:
        bag_code = code_of(parent_code, None)

        async def use_case(tx: Tx) -> Answer:
            row, totals = await _lock_bill(tx, bill_number)
            removed = (
                await tx.conn.execute(
                    delete(BillParent)
                    .where(
                        BillParent.bill_id == row.id,
                        BillParent.parent_id
                        == select(Bag.id).where(Bag.code == bag_code).scalar_subquery(),
                    )
                    .returning(BillParent.parent_id)
                )
            ).first()
            if removed is None:
                raise RuleBroken(
                    "PARENT_NOT_ON_BILL", f"Bag {bag_code} is not on bill {row.number}."
                )
            after_totals = await bill_totals(tx.conn, row.id, row.capacity)
            status = rules.status_after_change(after_totals, BillStatus(row.status))
            await _save_status(tx, row.id, status)
            before = bill_json(row, totals, row.status)
            after = bill_json(row, after_totals, status)
            data = _bill_change(
                tx,
                "bill.remove_parent",
                EventKind.BILL_BAG_REMOVED,
                before,
                after,
                {"parent": {"code": bag_code}},
            )
            message = f"{bag_code} removed from bill {row.number} ({after_totals.progress()})"
            return Answer(Outcome.OK, message, data)

        return use_case

    return await _run_bill(engine, actor, client_id, "remove_bill_parent", number, make)


async def complete_bill(
    engine: AsyncEngine, actor: Actor, client_id: object, number: object
) -> Result:
    def make(bill_number: str) -> UseCase:
        async def use_case(tx: Tx) -> Answer:
            row, totals = await _lock_bill(tx, bill_number)
            before = bill_json(row, totals, row.status)
            if row.status == BillStatus.COMPLETED:
                return Answer(
                    Outcome.DUPLICATE, f"Bill {row.number} is already completed", {"bill": before}
                )
            rules.check_complete(totals)
            await _save_status(tx, row.id, BillStatus.COMPLETED)
            after = bill_json(row, totals, BillStatus.COMPLETED)
            data = _bill_change(tx, "bill.complete", EventKind.BILL_COMPLETED, before, after)
            return Answer(Outcome.OK, f"Bill {row.number} completed ({totals.progress()})", data)

        return use_case

    return await _run_bill(engine, actor, client_id, "complete_bill", number, make)


async def reopen_bill(
    engine: AsyncEngine, actor: Actor, client_id: object, number: object
) -> Result:
    def make(bill_number: str) -> UseCase:
        async def use_case(tx: Tx) -> Answer:
            row, totals = await _lock_bill(tx, bill_number)
            if row.status != BillStatus.COMPLETED:
                raise RuleBroken("BILL_NOT_COMPLETED", f"Bill {row.number} is not completed.")
            await _save_status(tx, row.id, BillStatus.PROCESSING)
            before = bill_json(row, totals, row.status)
            after = bill_json(row, totals, BillStatus.PROCESSING)
            data = _bill_change(tx, "bill.reopen", EventKind.BILL_UPDATED, before, after)
            return Answer(Outcome.OK, f"Bill {row.number} reopened ({totals.progress()})", data)

        return use_case

    return await _run_bill(engine, actor, client_id, "reopen_bill", number, make)


async def delete_bill(
    engine: AsyncEngine, actor: Actor, client_id: object, number: object
) -> Result:
    def make(bill_number: str) -> UseCase:
        async def use_case(tx: Tx) -> Answer:
            row, totals = await _lock_bill(tx, bill_number)
            before = bill_json(row, totals, row.status)
            await tx.conn.execute(delete(Bill).where(Bill.id == row.id))
            tx.audit("bill.delete", "bill", row.number, before, None)
            tx.emit(
                NewEvent(
                    EventKind.BILL_DELETED,
                    None,
                    {"bill": {"number": row.number}, "by": actor.username},
                )
            )
            message = f"Bill {row.number} deleted; its {totals.linked} parent bags are free again"
            return Answer(Outcome.OK, message, {"bill": {"number": row.number}})

        return use_case

    return await _run_bill(
        engine, actor, client_id, "delete_bill", number, make, permission=Permission.DELETE_BILL
    )
