"""Scanning use cases (SPEC §2): parents, children, undo, finish."""

from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.domain import linking
from traitortrack.domain.codes import BagKind, InvalidBagCode, normalize_code
from traitortrack.domain.events import EventKind, NewEvent, parent_json
from traitortrack.domain.linking import BagStatus
from traitortrack.domain.outcomes import BadInput, Outcome, RuleBroken
from traitortrack.domain.roles import Permission
from traitortrack.services.commands import (
    Actor,
    Answer,
    Command,
    Planned,
    Result,
    Tx,
    UseCase,
    check_area,
    check_client_id,
    rejected,
    require,
    run,
)
from traitortrack.services.group_commit import group_commit, parent_state

# The scan path runs these prebuilt statements on asyncpg directly (see commands.run).
_PARENT = "id, code, kind, area, child_count, status"
_LOCK_PARENT = f"SELECT {_PARENT} FROM bag WHERE code = $1 FOR UPDATE"
_FIND_BAG = f"SELECT {_PARENT} FROM bag WHERE code = $1"
_CREATE_PARENT = f"""
    INSERT INTO bag (code, kind, area, owner_id) VALUES ($1, 'parent', $2, $3)
    ON CONFLICT (code) DO NOTHING RETURNING {_PARENT}
"""
_COUNT = "UPDATE bag SET child_count = $2, status = $3, updated_at = now() WHERE id = $1"
_LAST_LINK = """
    SELECT l.child_id, l.user_id, l.created_at, b.code, now() AS now
    FROM link AS l JOIN bag AS b ON b.id = l.child_id
    WHERE l.parent_id = $1 ORDER BY l.created_at DESC LIMIT 1
"""
_UNLINK = "DELETE FROM link WHERE child_id = $1"

Record = Any  # an asyncpg.Record


def code_of(raw: object, kind: BagKind | None) -> str:
    """Normalise a scanned code, turning a bad one into a :class:`BadInput` refusal."""
    try:
        return normalize_code(raw, kind)  # type: ignore[arg-type]  # non-str is refused inside
    except InvalidBagCode as error:
        raise BadInput("INVALID_CODE", str(error)) from None


async def lock_parent(tx: Tx, code: str) -> Record:
    """Lock the parent row: every change to a parent's children is serialised on it."""
    row = await tx.pg.fetchrow(_LOCK_PARENT, code)
    if row is None:
        raise linking.parent_not_registered(code)
    if row["kind"] != "parent":
        raise linking.registered_as_child(code)
    check_area(tx.actor, code, row["area"])
    return row


async def scan_parent(engine: AsyncEngine, actor: Actor, client_id: object, code: object) -> Result:
    """Make a parent the scanner's current parent, creating it in the scanner's area if new."""

    def plan() -> Planned:
        require(actor, Permission.SCAN)
        parent_code = code_of(code, "parent")

        async def use_case(tx: Tx) -> Answer:
            row = await tx.pg.fetchrow(_CREATE_PARENT, parent_code, actor.area, actor.user_id)
            was_created = row is not None
            if row is None:
                row = await tx.pg.fetchrow(_FIND_BAG, parent_code)
                if row is None:
                    raise RuleBroken("BUSY", f"{parent_code} changed just now; scan it again.")
                if row["kind"] != "parent":
                    raise linking.registered_as_child(parent_code)
                check_area(actor, parent_code, row["area"])
            parent = parent_state(row)
            data = {"parent": parent_json(parent.code, parent.children, parent.status)}
            tx.emit(
                NewEvent(
                    EventKind.PARENT_SCANNED,
                    row["area"],
                    {**data, "created": was_created, "by": actor.username},
                )
            )
            return Answer(Outcome.OK, linking.parent_scanned_message(parent, was_created), data)

        return Command("scan_parent", code=parent_code), use_case

    return await run(engine, actor, client_id, plan)


async def link_child(
    engine: AsyncEngine, actor: Actor, client_id: object, parent_code: object, child_code: object
) -> Result:
    """Link a child into a named parent, creating the child if new (the 30th completes it).

    Child scans are committed in groups (see :mod:`traitortrack.services.group_commit`)."""
    try:
        checked_id = check_client_id(client_id)
        require(actor, Permission.SCAN)
        child = code_of(child_code, "child")
        if parent_code is None or parent_code == "":
            raise linking.no_parent_selected()
        parent = code_of(parent_code, "parent")
    except BadInput as error:
        return rejected(error)
    return await group_commit(engine).link(actor, checked_id, parent, child)


async def undo_last_child(
    engine: AsyncEngine, actor: Actor, client_id: object, parent_code: object
) -> Result:
    """Unlink the parent's most recent child, within an hour, by its scanner or an admin."""

    def make(code: str) -> UseCase:
        async def use_case(tx: Tx) -> Answer:
            row = await lock_parent(tx, code)
            last = await tx.pg.fetchrow(_LAST_LINK, row["id"])
            if last is None:
                raise RuleBroken("NOTHING_TO_UNDO", f"{code} has no child bags to undo.")
            linking.check_undo(
                last["created_at"], last["user_id"], actor.user_id, actor.is_admin, last["now"]
            )
            await tx.pg.execute(_UNLINK, last["child_id"])
            children = row["child_count"] - 1
            status = linking.status_for(children)
            await tx.pg.execute(_COUNT, row["id"], children, status.value)
            child = last["code"]
            data = {"parent": parent_json(code, children, status), "child": child}
            tx.emit(NewEvent(EventKind.CHILD_UNLINKED, row["area"], {**data, "by": actor.username}))
            message = f"Removed {child} from {code} ({children}/{linking.MAX_CHILDREN})"
            return Answer(Outcome.OK, message, data)

        return use_case

    return await _on_parent(engine, actor, client_id, parent_code, "undo", make)


async def finish_parent(
    engine: AsyncEngine, actor: Actor, client_id: object, parent_code: object
) -> Result:
    """End scanning a parent early; it stays pending and resumes when scanned again."""

    def make(code: str) -> UseCase:
        async def use_case(tx: Tx) -> Answer:
            parent = parent_state(await lock_parent(tx, code))
            data = {"parent": parent_json(parent.code, parent.children, parent.status)}
            if parent.status == BagStatus.COMPLETED:
                return Answer(Outcome.OK, linking.parent_scanned_message(parent, False), data)
            message = (
                f"{code} finished with {parent.progress()} child bags; scan it again to add more."
            )
            return Answer(Outcome.OK, message, data)

        return use_case

    return await _on_parent(engine, actor, client_id, parent_code, "finish", make)


async def _on_parent(
    engine: AsyncEngine,
    actor: Actor,
    client_id: object,
    parent_code: object,
    action: str,
    make: Callable[[str], UseCase],
) -> Result:
    """The shape of the use cases on the scanner's current parent: check, normalise, run."""

    def plan() -> Planned:
        require(actor, Permission.SCAN)
        if parent_code is None or parent_code == "":
            raise linking.no_parent_selected()
        code = code_of(parent_code, "parent")
        return Command(action, code=code, parent_code=code), make(code)

    return await run(engine, actor, client_id, plan)
