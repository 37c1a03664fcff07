"""Scanning use cases (SPEC §2): parents, children, undo, finish."""

from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from traitortrack.db.models import Bag, Link
from traitortrack.domain import linking
from traitortrack.domain.codes import BagKind, InvalidBagCode, normalize_code
from traitortrack.domain.events import EventKind, NewEvent, parent_json
from traitortrack.domain.linking import BagStatus, ExistingChild, ParentState
from traitortrack.domain.outcomes import BadInput, Outcome, RuleBroken
from traitortrack.domain.roles import Permission, Role
from traitortrack.services.commands import Actor, Answer, Command, Planned, Result, Tx, require, run

_PARENT_COLUMNS = (Bag.id, Bag.code, Bag.kind, Bag.area, Bag.child_count, Bag.status)


def code_of(raw: object, kind: BagKind | None) -> str:
    """Normalise a scanned code, turning a bad one into a :class:`BadInput` refusal."""
    try:
        return normalize_code(raw, kind)  # type: ignore[arg-type]  # non-str is refused inside
    except InvalidBagCode as error:
        raise BadInput("INVALID_CODE", str(error)) from None


def _state(row: Row[Any]) -> ParentState:
    return ParentState(row.code, row.child_count, BagStatus(row.status))


def check_area(actor: Actor, code: str, bag_area: str | None) -> None:
    """Dispatchers work only on their own area's bags; everyone else sees all areas."""
    if actor.role == Role.DISPATCHER and bag_area != actor.area:
        raise linking.outside_area(code, bag_area, actor.area)


async def lock_parent(tx: Tx, code: str) -> Row[Any]:
    """Lock the parent row: every change to a parent's children is serialised on it."""
    row = (
        await tx.conn.execute(select(*_PARENT_COLUMNS).where(Bag.code == code).with_for_update())
    ).one_or_none()
    if row is None:
        raise linking.parent_not_registered(code)
    if row.kind != "parent":
        raise linking.registered_as_child(code)
    check_area(tx.actor, code, row.area)
    return row


async def scan_parent(engine: AsyncEngine, actor: Actor, client_id: object, code: object) -> Result:
    """Make a parent the scanner's current parent, creating it in the scanner's area if new."""

    def plan() -> Planned:
        require(actor, Permission.SCAN)
        parent_code = code_of(code, "parent")

        async def use_case(tx: Tx) -> Answer:
            created = await tx.conn.execute(
                pg_insert(Bag)
                .values(code=parent_code, kind="parent", area=actor.area, owner_id=actor.user_id)
                .on_conflict_do_nothing(index_elements=[Bag.code])
                .returning(*_PARENT_COLUMNS)
            )
            row = created.one_or_none()
            was_created = row is not None
            if row is None:
                row = (
                    await tx.conn.execute(select(*_PARENT_COLUMNS).where(Bag.code == parent_code))
                ).one()
                if row.kind != "parent":
                    raise linking.registered_as_child(parent_code)
                check_area(actor, parent_code, row.area)
            parent = _state(row)
            data = {"parent": parent_json(parent.code, parent.children, parent.status)}
            tx.emit(
                NewEvent(
                    EventKind.PARENT_SCANNED,
                    row.area,
                    {**data, "created": was_created, "by": actor.username},
                )
            )
            return Answer(Outcome.OK, linking.parent_scanned_message(parent, was_created), data)

        return Command("scan_parent", code=parent_code), use_case

    return await run(engine, actor, client_id, plan)


async def _existing_child(conn: AsyncConnection, code: str) -> tuple[int, ExistingChild] | None:
    linked_parent = aliased(Bag)
    row = (
        await conn.execute(
            select(Bag.id, Bag.kind, Bag.child_count, linked_parent.code.label("parent_code"))
            .outerjoin(Link, Link.child_id == Bag.id)
            .outerjoin(linked_parent, linked_parent.id == Link.parent_id)
            .where(Bag.code == code)
        )
    ).one_or_none()
    if row is None:
        return None
    return row.id, ExistingChild(row.kind == "parent", row.child_count, row.parent_code)


async def _claim_child(tx: Tx, parent: ParentState, parent_row: Row[Any], code: str) -> int | None:
    """Return the id of the child to link, or None when it is already in this parent.

    Creation and linking both go through ``ON CONFLICT DO NOTHING``: when another transaction
    wins a race for the same code, we read what it wrote and decide again.
    """
    for _ in range(3):
        found = await _existing_child(tx.conn, code)
        if not linking.check_link(parent, code, found[1] if found else None):
            return None
        if found is None:
            child_id = (
                await tx.conn.execute(
                    pg_insert(Bag)
                    .values(
                        code=code, kind="child", area=parent_row.area, owner_id=tx.actor.user_id
                    )
                    .on_conflict_do_nothing(index_elements=[Bag.code])
                    .returning(Bag.id)
                )
            ).scalar_one_or_none()
            if child_id is None:
                continue
        else:
            child_id = found[0]
        linked = await tx.conn.execute(
            pg_insert(Link)
            .values(
                child_id=child_id,
                parent_id=parent_row.id,
                user_id=tx.actor.user_id,
                created_at=func.clock_timestamp(),
            )
            .on_conflict_do_nothing(index_elements=[Link.child_id])
            .returning(Link.child_id)
        )
        if linked.first() is not None:
            return child_id
    raise RuleBroken("BUSY", f"{code} is being scanned elsewhere right now; scan it again.")


async def link_child(
    engine: AsyncEngine, actor: Actor, client_id: object, parent_code: object, child_code: object
) -> Result:
    """Link a child into a named parent, creating the child if new (the 30th completes it)."""

    def plan() -> Planned:
        require(actor, Permission.SCAN)
        child = code_of(child_code, "child")
        if parent_code is None or parent_code == "":
            raise linking.no_parent_selected()
        parent_normalised = code_of(parent_code, "parent")

        async def use_case(tx: Tx) -> Answer:
            row = await lock_parent(tx, parent_normalised)
            parent = _state(row)
            if await _claim_child(tx, parent, row, child) is None:
                data = {"parent": parent_json(parent.code, parent.children, parent.status)}
                return Answer(Outcome.DUPLICATE, linking.duplicate_message(child, parent), data)
            children = parent.children + 1
            status = linking.status_for(children)
            await tx.conn.execute(
                update(Bag)
                .where(Bag.id == row.id)
                .values(child_count=children, status=status.value, updated_at=func.now())
            )
            after = ParentState(parent.code, children, status)
            data = {"parent": parent_json(after.code, after.children, after.status)}
            tx.emit(
                NewEvent(
                    EventKind.CHILD_LINKED, row.area, {**data, "child": child, "by": actor.username}
                )
            )
            if status == BagStatus.COMPLETED:
                tx.emit(
                    NewEvent(EventKind.PARENT_COMPLETED, row.area, {**data, "by": actor.username})
                )
            return Answer(Outcome.OK, linking.linked_message(child, after), data)

        return Command("link_child", code=child, parent_code=parent_normalised), use_case

    return await run(engine, actor, client_id, plan)


async def undo_last_child(
    engine: AsyncEngine, actor: Actor, client_id: object, parent_code: object
) -> Result:
    """Unlink the parent's most recent child, within an hour, by its scanner or an admin."""

    def plan() -> Planned:
        require(actor, Permission.SCAN)
        if parent_code is None or parent_code == "":
            raise linking.no_parent_selected()
        code = code_of(parent_code, "parent")

        async def use_case(tx: Tx) -> Answer:
            row = await lock_parent(tx, code)
            last = (
                await tx.conn.execute(
                    select(
                        Link.child_id,
                        Link.user_id,
                        Link.created_at,
                        Bag.code,
                        func.now().label("now"),
                    )
                    .join(Bag, Bag.id == Link.child_id)
                    .where(Link.parent_id == row.id)
                    .order_by(Link.created_at.desc())
                    .limit(1)
                )
            ).one_or_none()
            if last is None:
                raise RuleBroken("NOTHING_TO_UNDO", f"{code} has no child bags to undo.")
            linking.check_undo(
                last.created_at, last.user_id, actor.user_id, actor.is_admin, last.now
            )
            await tx.conn.execute(delete(Link).where(Link.child_id == last.child_id))
            children = row.child_count - 1
            status = linking.status_for(children)
            await tx.conn.execute(
                update(Bag)
                .where(Bag.id == row.id)
                .values(child_count=children, status=status.value, updated_at=func.now())
            )
            data = {"parent": parent_json(code, children, status), "child": last.code}
            tx.emit(NewEvent(EventKind.CHILD_UNLINKED, row.area, {**data, "by": actor.username}))
            message = f"Removed {last.code} from {code} ({children}/{linking.MAX_CHILDREN})"
            return Answer(Outcome.OK, message, data)

        return Command("undo", code=code, parent_code=code), use_case

    return await run(engine, actor, client_id, plan)


async def finish_parent(
    engine: AsyncEngine, actor: Actor, client_id: object, parent_code: object
) -> Result:
    """End scanning a parent early; it stays pending and resumes when scanned again."""

    def plan() -> Planned:
        require(actor, Permission.SCAN)
        if parent_code is None or parent_code == "":
            raise linking.no_parent_selected()
        code = code_of(parent_code, "parent")

        async def use_case(tx: Tx) -> Answer:
            parent = _state(await lock_parent(tx, code))
            data = {"parent": parent_json(parent.code, parent.children, parent.status)}
            if parent.status == BagStatus.COMPLETED:
                return Answer(Outcome.OK, linking.parent_scanned_message(parent, False), data)
            message = (
                f"{code} finished with {parent.progress()} child bags; scan it again to add more."
            )
            return Answer(Outcome.OK, message, data)

        return Command("finish", code=code, parent_code=code), use_case

    return await run(engine, actor, client_id, plan)
