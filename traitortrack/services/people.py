"""Administration (SPEC §4, §5): user accounts, dispatch areas, wall-display links, the audit log.

Every change runs in one transaction together with its audit row (who, what, before/after,
request id, anonymised IP) and, for accounts, a ``user.changed`` event in the outbox. Refusals
roll everything back and come back as a :class:`Done` with a message for the page: nothing here
raises for bad input.

All account changes take one transaction-scoped advisory lock first. Admin changes are rare, and
serialising them is what makes the counting guards true under concurrency: two creations cannot
both see the ninth dispatcher slot free, and two admins demoting each other cannot both see
another admin left. One lock, always taken first, also means no lock-order deadlocks.
"""

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.models import Area, Audit, DisplayLink, User
from traitortrack.domain.events import Event as PublishedEvent
from traitortrack.domain.events import user_changed
from traitortrack.domain.outcomes import RuleBroken
from traitortrack.domain.roles import MAX_DISPATCHERS_PER_AREA, Role
from traitortrack.security import (
    generate_password,
    hash_password,
    hash_token,
    new_token,
    password_problems,
)
from traitortrack.services.accounts import lift_pauses
from traitortrack.services.commands import Actor, Tx, write_outbox

ACCOUNTS_LOCK_KEY = 0x74727573657273  # "trusers"; distinct from the migration lock
USERNAME = re.compile(r"[A-Za-z0-9._-]{3,64}")
AREA_NAME = re.compile(r"[a-z0-9_]{2,40}")
DISPLAY_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")
MAX_LABEL = 80
AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class Done:
    """What an administrative action did, for the page that asked."""

    ok: bool
    message: str
    error: str | None = None
    # Secrets shown exactly once and never stored in the clear.
    password: str | None = None
    token: str | None = None
    events: tuple[PublishedEvent, ...] = ()


async def _in_transaction(
    engine: AsyncEngine, actor: Actor, change: Callable[[Tx], Awaitable[Done]]
) -> Done:
    """Run ``change`` with the accounts lock held; its audit rows and events commit with it."""
    try:
        async with engine.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(ACCOUNTS_LOCK_KEY)))
            await _require_admin(conn, actor)
            tx = Tx(conn, actor, (await conn.get_raw_connection()).driver_connection)
            done = await change(tx)
            events = await write_outbox(tx)
    except RuleBroken as refusal:
        return Done(False, refusal.message, refusal.code)
    except IntegrityError:
        # A constraint caught what the checks above could not see (a concurrent change by
        # something that does not take the lock). Nothing was saved.
        return Done(False, "That changed while saving; nothing was saved. Try again.", "CONFLICT")
    return replace(done, events=events)


async def _require_admin(conn: AsyncConnection, actor: Actor) -> None:
    """The page checked the role at the start of the request; this checks it still holds now
    that the lock is ours (another admin may have just demoted this one)."""
    role = (
        await conn.execute(select(User.role).where(User.id == actor.user_id, User.active))
    ).scalar_one_or_none()
    if role != Role.ADMIN.value:
        raise RuleBroken("NOT_ADMIN", "Your account is no longer an admin; nothing was changed.")


# Users ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    id: int
    username: str
    role: str
    area: str | None
    active: bool
    totp_enabled: bool
    created_at: datetime
    last_login_at: datetime | None


_PERSON_COLUMNS = (
    User.id,
    User.username,
    User.role,
    User.area,
    User.active,
    User.totp_enabled,
    User.created_at,
    User.last_login_at,
)


def _person(row: Row[Any]) -> Person:
    return Person(*row)


def _snapshot(person: Person) -> dict[str, Any]:
    return {
        "username": person.username,
        "role": person.role,
        "area": person.area,
        "active": person.active,
    }


async def list_users(engine: AsyncEngine) -> list[Person]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(*_PERSON_COLUMNS).order_by(User.active.desc(), func.lower(User.username))
        )
        return [_person(row) for row in rows]


async def find_user(engine: AsyncEngine, user_id: int) -> Person | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(*_PERSON_COLUMNS).where(User.id == user_id))).one_or_none()
    return None if row is None else _person(row)


async def _lock_user(conn: AsyncConnection, user_id: int) -> Person:
    row = (
        await conn.execute(select(*_PERSON_COLUMNS).where(User.id == user_id).with_for_update())
    ).one_or_none()
    if row is None:
        raise RuleBroken("NOT_FOUND", "That user does not exist (any more).")
    return _person(row)


def _check_username(raw: object) -> str:
    username = raw.strip() if isinstance(raw, str) else ""
    if not USERNAME.fullmatch(username):
        raise RuleBroken(
            "INVALID_USERNAME",
            "Usernames are 3-64 characters: letters, digits, dot, dash or underscore.",
        )
    return username


def _check_role(raw: object) -> Role:
    try:
        return Role(raw)
    except ValueError:
        message = "Choose a role: admin, biller, dispatcher or supervisor."
        raise RuleBroken("INVALID_ROLE", message) from None


def _check_password(raw: object) -> str | None:
    """The admin's chosen password, or None to generate one."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise RuleBroken("INVALID_PASSWORD", "The password must be text.")
    problems = password_problems(raw)
    if problems:
        raise RuleBroken("WEAK_PASSWORD", "The password needs " + ", ".join(problems) + ".")
    return raw


async def _check_area(conn: AsyncConnection, role: Role, raw: object) -> str | None:
    area = raw.strip() if isinstance(raw, str) else ""
    if not area:
        if role == Role.DISPATCHER:
            raise RuleBroken("AREA_REQUIRED", "A dispatcher must have a dispatch area: choose one.")
        return None
    known = (await conn.execute(select(Area.name).where(Area.name == area))).scalar_one_or_none()
    if known is None:
        raise RuleBroken("UNKNOWN_AREA", f"There is no dispatch area called {area}.")
    return area


async def _check_dispatcher_room(conn: AsyncConnection, area: str, leaving: int | None) -> None:
    """Refuse a new active dispatcher in ``area`` when it already has the maximum
    (``leaving`` is a user already counted there who is only being edited)."""
    conditions = [User.role == Role.DISPATCHER.value, User.active, User.area == area]
    if leaving is not None:
        conditions.append(User.id != leaving)
    count = (
        await conn.execute(select(func.count()).select_from(User).where(*conditions))
    ).scalar_one()
    if count >= MAX_DISPATCHERS_PER_AREA:
        raise RuleBroken(
            "AREA_FULL",
            f"Dispatch area {area} already has {count} active dispatchers, the maximum is "
            f"{MAX_DISPATCHERS_PER_AREA}. Deactivate one or choose another area.",
        )


async def _check_not_last_admin(conn: AsyncConnection, person: Person, verb: str) -> None:
    if person.role != Role.ADMIN.value or not person.active:
        return
    others = (
        await conn.execute(
            select(func.count())
            .select_from(User)
            .where(User.role == Role.ADMIN.value, User.active, User.id != person.id)
        )
    ).scalar_one()
    if others == 0:
        raise RuleBroken(
            "LAST_ADMIN",
            f"{person.username} is the last active admin and cannot be {verb}. "
            "Make another user an admin first.",
        )


def _check_not_self(actor: Actor, person: Person, what: str) -> None:
    if actor.user_id == person.id:
        raise RuleBroken("SELF", f"You cannot {what} yourself; ask another admin.")


async def create_person(
    engine: AsyncEngine,
    actor: Actor,
    username: object,
    role: object,
    area: object,
    password: object = None,
) -> Done:
    """Create an account; with no password given, one is generated and returned once."""
    try:
        name = _check_username(username)
        chosen_role = _check_role(role)
        chosen = _check_password(password)
    except RuleBroken as refusal:
        return Done(False, refusal.message, refusal.code)
    secret = chosen or generate_password()
    # bcrypt is slow on purpose: hash before taking the lock, and off the event loop.
    hashed = await asyncio.to_thread(hash_password, secret)

    async def change(tx: Tx) -> Done:
        chosen_area = await _check_area(tx.conn, chosen_role, area)
        if chosen_role == Role.DISPATCHER and chosen_area is not None:
            await _check_dispatcher_room(tx.conn, chosen_area, None)
        user_id = (
            await tx.conn.execute(
                pg_insert(User)
                .values(
                    username=name,
                    password_hash=hashed,
                    role=chosen_role.value,
                    area=chosen_area,
                )
                .on_conflict_do_nothing()
                .returning(User.id)
            )
        ).scalar_one_or_none()
        if user_id is None:
            raise RuleBroken("USER_EXISTS", f"User {name} already exists.")
        person = await _lock_user(tx.conn, user_id)
        tx.audit("user.create", "user", name, None, _snapshot(person))
        tx.emit(user_changed(person.id))
        return Done(
            True,
            f"User {name} created as {chosen_role.value}"
            + (f" in {chosen_area}." if chosen_area else "."),
            password=None if chosen else secret,
        )

    return await _in_transaction(engine, actor, change)


async def update_person(
    engine: AsyncEngine, actor: Actor, user_id: int, role: object, area: object
) -> Done:
    """Set role and dispatch area. A role change ends the user's sessions."""
    try:
        chosen_role = _check_role(role)
    except RuleBroken as refusal:
        return Done(False, refusal.message, refusal.code)

    async def change(tx: Tx) -> Done:
        person = await _lock_user(tx.conn, user_id)
        chosen_area = await _check_area(tx.conn, chosen_role, area)
        role_changes = chosen_role.value != person.role
        if role_changes:
            if chosen_role != Role.ADMIN:
                await _check_not_last_admin(tx.conn, person, "demoted")
            _check_not_self(tx.actor, person, "change the role of")
        if (
            person.active
            and chosen_role == Role.DISPATCHER
            and chosen_area is not None
            and (person.role != Role.DISPATCHER.value or person.area != chosen_area)
        ):
            await _check_dispatcher_room(tx.conn, chosen_area, person.id)
        if not role_changes and chosen_area == person.area:
            return Done(True, f"Nothing to change for {person.username}.")
        values: dict[str, Any] = {"role": chosen_role.value, "area": chosen_area}
        if role_changes:
            values["session_version"] = User.session_version + 1
        await tx.conn.execute(update(User).where(User.id == person.id).values(**values))
        after = await _lock_user(tx.conn, person.id)
        action = "user.role_change" if role_changes else "user.area_change"
        tx.audit(action, "user", person.username, _snapshot(person), _snapshot(after))
        tx.emit(user_changed(after.id, sessions_revoked=role_changes))
        message = f"{person.username} is now {chosen_role.value}" + (
            f" in {chosen_area}." if chosen_area else "."
        )
        if role_changes:
            message += " Their sessions were ended: they sign in again with the new role."
        return Done(True, message)

    return await _in_transaction(engine, actor, change)


async def set_active(engine: AsyncEngine, actor: Actor, user_id: int, active: bool) -> Done:
    """Deactivate (ends every session, blocks sign-in) or reactivate an account."""

    async def change(tx: Tx) -> Done:
        person = await _lock_user(tx.conn, user_id)
        if person.active == active:
            state = "active" if active else "deactivated"
            return Done(True, f"{person.username} is already {state}.")
        values: dict[str, Any] = {"active": active}
        if active:
            if person.role == Role.DISPATCHER.value and person.area is not None:
                await _check_dispatcher_room(tx.conn, person.area, person.id)
            await lift_pauses(tx.conn, person.id)
        else:
            await _check_not_last_admin(tx.conn, person, "deactivated")
            _check_not_self(tx.actor, person, "deactivate")
            # Bumped so that sessions from before do not come back with a reactivation.
            values["session_version"] = User.session_version + 1
        await tx.conn.execute(update(User).where(User.id == person.id).values(**values))
        after = await _lock_user(tx.conn, person.id)
        action = "user.reactivate" if active else "user.deactivate"
        tx.audit(action, "user", person.username, _snapshot(person), _snapshot(after))
        tx.emit(user_changed(after.id, sessions_revoked=not active))
        if active:
            return Done(True, f"{person.username} is active again and can sign in.")
        return Done(True, f"{person.username} is deactivated and signed out everywhere.")

    return await _in_transaction(engine, actor, change)


async def delete_person(engine: AsyncEngine, actor: Actor, user_id: int) -> Done:
    """Delete an account. Their scans, bills and audit entries stay, with no author."""

    async def change(tx: Tx) -> Done:
        person = await _lock_user(tx.conn, user_id)
        await _check_not_last_admin(tx.conn, person, "deleted")
        _check_not_self(tx.actor, person, "delete")
        await tx.conn.execute(delete(User).where(User.id == person.id))
        tx.audit("user.delete", "user", person.username, _snapshot(person), None)
        tx.emit(user_changed(person.id, sessions_revoked=True, deleted=True))
        return Done(True, f"User {person.username} deleted. Their scans and bills are kept.")

    return await _in_transaction(engine, actor, change)


async def reset_password(engine: AsyncEngine, actor: Actor, user_id: int) -> Done:
    """Give the user a generated password (returned once) and end their sessions."""
    secret = generate_password()
    hashed = await asyncio.to_thread(hash_password, secret)

    async def change(tx: Tx) -> Done:
        person = await _lock_user(tx.conn, user_id)
        if tx.actor.user_id == person.id:
            raise RuleBroken(
                "SELF", "Change your own password on the Account page, with your current one."
            )
        await tx.conn.execute(
            update(User)
            .where(User.id == person.id)
            .values(password_hash=hashed, session_version=User.session_version + 1)
        )
        await lift_pauses(tx.conn, person.id)
        tx.audit("user.password_reset", "user", person.username, None, {"sessions_revoked": True})
        tx.emit(user_changed(person.id, sessions_revoked=True))
        return Done(
            True,
            f"New password for {person.username}. Give it to them now: it is not shown again. "
            "Their sessions were ended.",
            password=secret,
        )

    return await _in_transaction(engine, actor, change)


async def revoke_sessions(engine: AsyncEngine, actor: Actor, user_id: int) -> Done:
    """Sign the user out everywhere (every device, every open page)."""

    async def change(tx: Tx) -> Done:
        person = await _lock_user(tx.conn, user_id)
        await tx.conn.execute(
            update(User)
            .where(User.id == person.id)
            .values(session_version=User.session_version + 1)
        )
        tx.audit("user.sessions_revoked", "user", person.username, None, None)
        tx.emit(user_changed(person.id, sessions_revoked=True))
        return Done(True, f"Every session of {person.username} has been ended.")

    return await _in_transaction(engine, actor, change)


# Dispatch areas -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AreaSummary:
    name: str
    label: str
    dispatchers: int
    users: int


async def list_areas(engine: AsyncEngine) -> list[AreaSummary]:
    dispatchers = func.count(User.id).filter(User.role == Role.DISPATCHER.value, User.active)
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Area.name, Area.label, dispatchers, func.count(User.id))
            .select_from(Area)
            .outerjoin(User, User.area == Area.name)
            .group_by(Area.name, Area.label)
            .order_by(Area.name)
        )
        return [AreaSummary(*row) for row in rows]


async def add_area(engine: AsyncEngine, actor: Actor, name: object, label: object) -> Done:
    area = name.strip() if isinstance(name, str) else ""
    if not AREA_NAME.fullmatch(area):
        return Done(
            False,
            "Area names are 2-40 characters: lower-case letters, digits and underscores "
            "(e.g. sri_ganganagar).",
            "INVALID_AREA",
        )
    shown = (label.strip() if isinstance(label, str) else "") or area.replace("_", " ").title()
    if len(shown) > MAX_LABEL:
        return Done(False, f"The label can be at most {MAX_LABEL} characters.", "INVALID_LABEL")

    async def change(tx: Tx) -> Done:
        added = (
            await tx.conn.execute(
                pg_insert(Area)
                .values(name=area, label=shown)
                .on_conflict_do_nothing()
                .returning(Area.name)
            )
        ).scalar_one_or_none()
        if added is None:
            raise RuleBroken("AREA_EXISTS", f"Dispatch area {area} already exists.")
        tx.audit("area.create", "area", area, None, {"name": area, "label": shown})
        return Done(True, f"Dispatch area {area} ({shown}) added.")

    return await _in_transaction(engine, actor, change)


# Wall-display links ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DisplaySummary:
    id: int
    label: str
    areas: list[str]
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None


async def list_display_links(engine: AsyncEngine) -> list[DisplaySummary]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                DisplayLink.id,
                DisplayLink.label,
                DisplayLink.areas,
                User.username,
                DisplayLink.created_at,
                DisplayLink.revoked_at,
            )
            .outerjoin(User, User.id == DisplayLink.created_by)
            .order_by(DisplayLink.revoked_at.is_not(None), DisplayLink.id.desc())
        )
        return [DisplaySummary(*row) for row in rows]


async def create_display_link(
    engine: AsyncEngine, actor: Actor, label: object, areas: list[str]
) -> Done:
    """A read-only wall link for ``areas``; the token is returned once, only its hash is kept."""
    shown = label.strip() if isinstance(label, str) else ""
    if not 1 <= len(shown) <= MAX_LABEL:
        return Done(False, f"Give the display a label (1-{MAX_LABEL} characters).", "INVALID_LABEL")
    chosen = sorted({area.strip() for area in areas if isinstance(area, str) and area.strip()})
    if not chosen:
        return Done(False, "Choose at least one dispatch area to show.", "AREA_REQUIRED")
    token = new_token()

    async def change(tx: Tx) -> Done:
        known = set(
            (await tx.conn.execute(select(Area.name).where(Area.name.in_(chosen)))).scalars()
        )
        if unknown := [area for area in chosen if area not in known]:
            raise RuleBroken("UNKNOWN_AREA", f"There is no dispatch area called {unknown[0]}.")
        link_id = (
            await tx.conn.execute(
                pg_insert(DisplayLink)
                .values(
                    label=shown,
                    token_hash=hash_token(token),
                    areas=chosen,
                    created_by=tx.actor.user_id,
                )
                .returning(DisplayLink.id)
            )
        ).scalar_one()
        tx.audit(
            "display.create", "display_link", str(link_id), None, {"label": shown, "areas": chosen}
        )
        return Done(
            True,
            f"Display link {shown} created. Copy it now: it is not shown again.",
            token=token,
        )

    return await _in_transaction(engine, actor, change)


async def revoke_display_link(engine: AsyncEngine, actor: Actor, link_id: int) -> Done:
    async def change(tx: Tx) -> Done:
        row = (
            await tx.conn.execute(
                update(DisplayLink)
                .where(DisplayLink.id == link_id, DisplayLink.revoked_at.is_(None))
                .values(revoked_at=func.now())
                .returning(DisplayLink.label, DisplayLink.areas)
            )
        ).one_or_none()
        if row is None:
            raise RuleBroken("NOT_FOUND", "That display link does not exist or is already revoked.")
        tx.audit(
            "display.revoke",
            "display_link",
            str(link_id),
            {"label": row.label, "areas": row.areas, "revoked": False},
            {"revoked": True},
        )
        return Done(True, f"Display link {row.label} revoked: screens using it stop updating.")

    return await _in_transaction(engine, actor, change)


@dataclass(frozen=True, slots=True)
class DisplayAccess:
    link_id: int
    label: str
    areas: list[str]

    @property
    def audience(self) -> frozenset[str] | None:
        """The areas its screens may see (None: every area, as when none is listed)."""
        return frozenset(self.areas) or None


async def open_display_link(
    engine: AsyncEngine, token: str, request_id: str | None, ip: str | None
) -> DisplayAccess | None:
    """The live link behind ``token`` (and an audit row for its use), or None."""
    if not DISPLAY_TOKEN.fullmatch(token):
        return None
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(DisplayLink.id, DisplayLink.label, DisplayLink.areas).where(
                    DisplayLink.token_hash == hash_token(token), DisplayLink.revoked_at.is_(None)
                )
            )
        ).one_or_none()
        if row is None:
            return None
        await conn.execute(
            pg_insert(Audit).values(
                action="display.opened",
                entity_type="display_link",
                entity_id=str(row.id),
                request_id=request_id,
                ip=ip,
            )
        )
    return DisplayAccess(row.id, row.label, list(row.areas))


async def display_link_access(engine: AsyncEngine, link_id: int) -> DisplayAccess | None:
    """Re-check a display session on every use: a revoked link stops working at once."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(DisplayLink.id, DisplayLink.label, DisplayLink.areas).where(
                    DisplayLink.id == link_id, DisplayLink.revoked_at.is_(None)
                )
            )
        ).one_or_none()
    return None if row is None else DisplayAccess(row.id, row.label, list(row.areas))


# Audit log ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    entity_type: str = ""
    entity_id: str = ""
    since: date | None = None
    until: date | None = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, args: Any) -> "AuditFilter":
        """From query arguments; unreadable dates are reported, not raised."""
        problems = []

        def day(key: str) -> date | None:
            raw = str(args.get(key, "")).strip()
            if not raw:
                return None
            try:
                return date.fromisoformat(raw)
            except ValueError:
                problems.append(f"{raw!r} is not a date (use YYYY-MM-DD).")
                return None

        def text(key: str, limit: int) -> str:
            return str(args.get(key, "")).strip()[:limit]

        return cls(
            actor=text("actor", 64),
            action=text("action", 64),
            entity_type=text("entity_type", 32),
            entity_id=text("entity_id", 100),
            since=day("since"),
            until=day("until"),
            problems=problems,
        )

    def query_args(self) -> dict[str, str]:
        """The filter as query arguments, for the "Older" link."""
        pairs = {
            "actor": self.actor,
            "action": self.action,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
        }
        return {key: value for key, value in pairs.items() if value}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor_id: int | None
    actor_name: str | None
    action: str
    entity_type: str
    entity_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    ip: str | None

    @staticmethod
    def compact(value: dict[str, Any] | None) -> str:
        if value is None:
            return ""
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    older: int | None  # pass as ?before= for the next page; None on the last page


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


async def search_audit(
    engine: AsyncEngine, where: AuditFilter, before: int | None, size: int = AUDIT_PAGE_SIZE
) -> AuditPage:
    """Newest first, keyset-paginated on the id: page 1000 costs what page 1 costs."""
    conditions = []
    if where.actor:
        conditions.append(func.lower(Audit.actor_name) == where.actor.lower())
    if where.action:
        conditions.append(Audit.action.startswith(where.action, autoescape=True))
    if where.entity_type:
        conditions.append(Audit.entity_type == where.entity_type)
    if where.entity_id:
        conditions.append(Audit.entity_id == where.entity_id)
    if where.since:
        conditions.append(Audit.at >= _midnight(where.since))
    if where.until:
        conditions.append(Audit.at < _midnight(where.until) + timedelta(days=1))
    if before is not None:
        conditions.append(Audit.id < before)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    Audit.id,
                    Audit.at,
                    Audit.actor_id,
                    Audit.actor_name,
                    Audit.action,
                    Audit.entity_type,
                    Audit.entity_id,
                    Audit.before,
                    Audit.after,
                    Audit.request_id,
                    Audit.ip,
                )
                .where(*conditions)
                .order_by(Audit.id.desc())
                .limit(size + 1)
            )
        ).all()
    entries = [AuditEntry(*row) for row in rows[:size]]
    return AuditPage(entries, entries[-1].id if len(rows) > size else None)
