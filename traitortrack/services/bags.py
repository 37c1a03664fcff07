"""Bag maintenance: deletion, only when nothing depends on the bag (SPEC §4)."""

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from traitortrack.db.models import Bag, Bill, BillParent, Link
from traitortrack.domain import bills as bill_rules
from traitortrack.domain.events import EventKind, NewEvent
from traitortrack.domain.outcomes import Outcome, RuleBroken
from traitortrack.domain.roles import Permission
from traitortrack.services.commands import Actor, Answer, Command, Planned, Result, Tx, require, run
from traitortrack.services.scans import code_of


async def delete_bag(engine: AsyncEngine, actor: Actor, client_id: object, code: object) -> Result:
    def plan() -> Planned:
        require(actor, Permission.DELETE_BAG)
        bag_code = code_of(code, None)

        async def use_case(tx: Tx) -> Answer:
            # Locking the bag makes concurrent links wait (their foreign key check needs it).
            bag = (
                await tx.conn.execute(
                    select(Bag.id, Bag.kind, Bag.area, Bag.child_count, Bag.status, Bag.created_at)
                    .where(Bag.code == bag_code)
                    .with_for_update()
                )
            ).one_or_none()
            if bag is None:
                raise bill_rules.bag_not_registered(bag_code)
            parent = aliased(Bag)
            blockers = (
                await tx.conn.execute(
                    select(
                        select(Link.child_id)
                        .where(Link.parent_id == bag.id)
                        .limit(1)
                        .exists()
                        .label("has_children"),
                        select(Bill.number)
                        .join(BillParent, BillParent.bill_id == Bill.id)
                        .where(BillParent.parent_id == bag.id)
                        .scalar_subquery()
                        .label("bill"),
                        select(parent.code)
                        .join(Link, Link.parent_id == parent.id)
                        .where(Link.child_id == bag.id)
                        .scalar_subquery()
                        .label("parent"),
                    )
                )
            ).one()
            if blockers.bill is not None:
                raise RuleBroken(
                    "PARENT_ON_BILL",
                    f"Parent bag {bag_code} is on bill {blockers.bill}; "
                    "remove it from the bill first.",
                )
            if blockers.has_children:
                raise RuleBroken(
                    "PARENT_HAS_CHILDREN",
                    f"Parent bag {bag_code} still holds {bag.child_count} child bags; "
                    "unlink them first.",
                )
            if blockers.parent is not None:
                raise RuleBroken(
                    "CHILD_LINKED",
                    f"Child bag {bag_code} is linked to parent bag {blockers.parent}; "
                    "undo that link first.",
                )
            await tx.conn.execute(delete(Bag).where(Bag.id == bag.id))
            before = {"code": bag_code, "kind": bag.kind, "area": bag.area, "status": bag.status}
            tx.audit("bag.delete", "bag", bag_code, before, None)
            tx.emit(
                NewEvent(EventKind.BAG_DELETED, bag.area, {"bag": before, "by": actor.username})
            )
            return Answer(Outcome.OK, f"Bag {bag_code} deleted", {"bag": before})

        return Command("delete_bag", code=bag_code), use_case

    return await run(engine, actor, client_id, plan)
