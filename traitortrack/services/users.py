"""Accounts: creation and the start-up bootstrap of ``admin``."""

import logging

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.db.models import Audit, User
from traitortrack.domain.roles import Role
from traitortrack.security import generate_password, hash_password, verify_password
from traitortrack.services.accounts import lift_pauses
from traitortrack.services.commands import Actor

log = logging.getLogger(__name__)

ADMIN_USERNAME = "admin"


class UserExists(ValueError):
    pass


async def create_user(
    engine: AsyncEngine,
    username: str,
    password: str,
    role: Role,
    area: str | None = None,
    rounds: int | None = None,
) -> int:
    hashed = hash_password(password) if rounds is None else hash_password(password, rounds)
    async with engine.begin() as conn:
        user_id = (
            await conn.execute(
                pg_insert(User)
                .values(username=username, password_hash=hashed, role=role.value, area=area)
                .on_conflict_do_nothing()
                .returning(User.id)
            )
        ).scalar_one_or_none()
        if user_id is None:
            raise UserExists(f"User {username} already exists")
        await conn.execute(
            pg_insert(Audit).values(
                action="user.create",
                entity_type="user",
                entity_id=username,
                after={"username": username, "role": role.value, "area": area},
            )
        )
    return user_id


async def ensure_admin(engine: AsyncEngine, password: str | None) -> str | None:
    """Create ``admin`` (or reset its password when one is configured).

    Returns a generated password when one had to be made up, so the caller can show it once.
    """
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(User.id, User.password_hash)
                .where(func.lower(User.username) == ADMIN_USERNAME)
                .with_for_update()
            )
        ).one_or_none()
        exists = None if row is None else row.id
        # Reset only when the configured password is not already the admin's: a reset ends
        # every admin session, and every worker start and deploy passes through here.
        if (
            row is not None
            and password is not None
            and not verify_password(password, row.password_hash)
        ):
            await conn.execute(
                update(User)
                .where(User.id == row.id)
                .values(
                    password_hash=hash_password(password),
                    session_version=User.session_version + 1,
                    active=True,
                )
            )
            await lift_pauses(conn, row.id)
            await conn.execute(
                pg_insert(Audit).values(
                    action="user.password_reset", entity_type="user", entity_id=ADMIN_USERNAME
                )
            )
            log.info("admin password set from ADMIN_PASSWORD")
    if exists is not None:
        return None
    generated = password is None
    chosen = password or generate_password()
    try:
        await create_user(engine, ADMIN_USERNAME, chosen, Role.ADMIN)
    except UserExists:
        return None  # another worker created it at the same moment
    return chosen if generated else None


async def actor_for(engine: AsyncEngine, username: str) -> Actor:
    """The active user called ``username``, as an actor for the services."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(User.id, User.username, User.role, User.area).where(
                    func.lower(User.username) == func.lower(username), User.active
                )
            )
        ).one_or_none()
    if row is None:
        raise LookupError(f"No active user called {username!r}")
    return Actor(row.id, row.username, Role(row.role), row.area)
