"""Signing in: passwords with lockout, TOTP without replay, recovery codes (SPEC §5).

Every outcome is audited in the same transaction as the change it records.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, any_, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.models import Audit, User
from traitortrack.domain.roles import Role
from traitortrack.security import (
    burn_password_check,
    hash_password,
    hash_recovery_code,
    new_recovery_codes,
    password_problems,
    totp_step,
    verify_password,
)

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
INVALID = "Invalid username or password."


@dataclass(frozen=True, slots=True)
class Account:
    """The signed-in person, as the web layer needs them on every request."""

    id: int
    username: str
    role: Role
    area: str | None
    session_version: int
    totp_enabled: bool

    @property
    def auth_id(self) -> str:
        return f"{self.id}.{self.session_version}"


@dataclass(frozen=True, slots=True)
class SignIn:
    account: Account | None
    message: str
    needs_totp: bool = False


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a security event came from, for the audit log."""

    request_id: str | None = None
    ip: str | None = None


_ACCOUNT_COLUMNS = (
    User.id,
    User.username,
    User.role,
    User.area,
    User.session_version,
    User.totp_enabled,
)


def _account(row: Row[Any]) -> Account:
    return Account(
        row.id, row.username, Role(row.role), row.area, row.session_version, row.totp_enabled
    )


async def audit(
    conn: AsyncConnection,
    origin: Origin,
    action: str,
    user_id: int | None,
    username: str | None,
    **after: Any,
) -> None:
    await conn.execute(
        insert(Audit).values(
            actor_id=user_id,
            actor_name=username,
            action=action,
            entity_type="user",
            entity_id=username,
            after=after or None,
            request_id=origin.request_id,
            ip=origin.ip,
        )
    )


async def _select_account(engine: AsyncEngine, *conditions: Any) -> Account | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(*_ACCOUNT_COLUMNS).where(User.active, *conditions))
        ).one_or_none()
    return None if row is None else _account(row)


async def load_account(engine: AsyncEngine, auth_id: str | None) -> Account | None:
    """The account behind a session, or None when it was revoked, deactivated or deleted."""
    try:
        user_id, version = (int(part) for part in (auth_id or "").split("."))
    except ValueError:
        return None
    return await _select_account(engine, User.id == user_id, User.session_version == version)


async def load_account_by_id(engine: AsyncEngine, user_id: int) -> Account | None:
    return await _select_account(engine, User.id == user_id)


def _minutes(delta: timedelta) -> int:
    return max(1, -(-int(delta.total_seconds()) // 60))


async def authenticate(
    engine: AsyncEngine, username: object, password: object, now: datetime, origin: Origin
) -> SignIn:
    if not isinstance(username, str) or not isinstance(password, str) or not username.strip():
        return SignIn(None, "Enter your username and password.")
    username = username.strip()[:64]
    password = password[:4096]
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(
                    *_ACCOUNT_COLUMNS,
                    User.password_hash,
                    User.active,
                    User.failed_logins,
                    User.locked_until,
                )
                .where(func.lower(User.username) == func.lower(username))
                .with_for_update()
            )
        ).one_or_none()
        if row is None:
            await asyncio.to_thread(burn_password_check, password)
            await audit(conn, origin, "login.unknown_user", None, None)
            return SignIn(None, INVALID)
        if row.locked_until is not None and row.locked_until > now:
            await audit(conn, origin, "login.while_locked", row.id, row.username)
            until = row.locked_until
            return SignIn(
                None,
                f"Account locked after {MAX_FAILED_LOGINS} failed attempts. Try again in "
                f"{_minutes(until - now)} minutes (at {until:%H:%M} UTC), or ask an admin.",
            )
        correct = await asyncio.to_thread(verify_password, password, row.password_hash)
        if correct and row.active:
            await conn.execute(
                update(User)
                .where(User.id == row.id)
                .values(failed_logins=0, locked_until=None, last_login_at=now)
            )
            await audit(conn, origin, "login.password_ok", row.id, row.username)
            return SignIn(_account(row), "Signed in.", needs_totp=row.totp_enabled)
        if correct:
            await audit(conn, origin, "login.inactive", row.id, row.username)
            return SignIn(None, "This account is deactivated. Ask an admin to reactivate it.")
        failures = row.failed_logins + 1
        if failures >= MAX_FAILED_LOGINS:
            await conn.execute(
                update(User)
                .where(User.id == row.id)
                .values(failed_logins=0, locked_until=now + LOCKOUT)
            )
            await audit(conn, origin, "login.locked", row.id, row.username)
            return SignIn(
                None,
                f"{INVALID} The account is now locked for {_minutes(LOCKOUT)} minutes "
                f"after {MAX_FAILED_LOGINS} failed attempts.",
            )
        await conn.execute(update(User).where(User.id == row.id).values(failed_logins=failures))
        await audit(conn, origin, "login.failed", row.id, row.username, failures=failures)
        left = MAX_FAILED_LOGINS - failures
        return SignIn(
            None,
            f"{INVALID} {left} attempt{'s' * (left != 1)} left before the account is "
            f"locked for {_minutes(LOCKOUT)} minutes.",
        )


async def verify_second_factor(
    engine: AsyncEngine, user_id: int, code: object, now: datetime, origin: Origin
) -> bool:
    """Accept a TOTP code once (a later time step than any accepted before) or an unused
    recovery code, which is then spent."""
    if not isinstance(code, str) or not code.strip() or len(code) > 64:
        return False
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(User.username, User.totp_secret).where(User.id == user_id, User.totp_enabled)
            )
        ).one_or_none()
        if row is None or row.totp_secret is None:
            return False
        step = totp_step(row.totp_secret, code, now)
        if step is not None:
            accepted = await conn.execute(
                update(User)
                .where(User.id == user_id, User.totp_last_step < step)
                .values(totp_last_step=step)
                .returning(User.id)
            )
            ok = accepted.first() is not None
            await audit(conn, origin, "2fa.ok" if ok else "2fa.replay", user_id, row.username)
            return ok
        spent = await conn.execute(
            update(User)
            .where(User.id == user_id, hash_recovery_code(code) == any_(User.recovery_codes))
            .values(recovery_codes=func.array_remove(User.recovery_codes, hash_recovery_code(code)))
            .returning(func.cardinality(User.recovery_codes))
        )
        left = spent.scalar_one_or_none()
        if left is not None:
            await audit(conn, origin, "2fa.recovery_code", user_id, row.username, left=left)
            return True
        await audit(conn, origin, "2fa.failed", user_id, row.username)
        return False


async def start_totp_enrolment(engine: AsyncEngine, user_id: int, secret: str) -> None:
    """Keep a new secret, not yet enabled: it takes effect only once a code confirms it."""
    async with engine.begin() as conn:
        await conn.execute(
            update(User)
            .where(User.id == user_id, User.totp_enabled.is_(False))
            .values(totp_secret=secret, totp_last_step=0)
        )


async def confirm_totp(
    engine: AsyncEngine, user_id: int, code: object, now: datetime, origin: Origin
) -> list[str] | None:
    """Enable 2FA when ``code`` matches the pending secret; returns the recovery codes to show
    once (only their hashes are kept)."""
    if not isinstance(code, str):
        return None
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(User.username, User.totp_secret)
                .where(User.id == user_id, User.totp_enabled.is_(False))
                .with_for_update()
            )
        ).one_or_none()
        if row is None or row.totp_secret is None:
            return None
        step = totp_step(row.totp_secret, code, now)
        if step is None:
            return None
        codes = new_recovery_codes()
        await conn.execute(
            update(User)
            .where(User.id == user_id)
            .values(
                totp_enabled=True,
                totp_last_step=step,
                recovery_codes=[hash_recovery_code(c) for c in codes],
            )
        )
        await audit(conn, origin, "2fa.enabled", user_id, row.username)
    return codes


async def _recheck_password(
    conn: AsyncConnection, user_id: int, password: str, origin: Origin, refused: str
) -> Row[Any] | None:
    """Lock the account and check its password again (for changes to its own security);
    None, audited as ``refused``, when the password is wrong."""
    row = (
        await conn.execute(
            select(User.username, User.password_hash).where(User.id == user_id).with_for_update()
        )
    ).one()
    if await asyncio.to_thread(verify_password, password, row.password_hash):
        return row
    await audit(conn, origin, refused, user_id, row.username)
    return None


async def disable_totp(engine: AsyncEngine, user_id: int, password: object, origin: Origin) -> bool:
    if not isinstance(password, str):
        return False
    async with engine.begin() as conn:
        row = await _recheck_password(conn, user_id, password, origin, "2fa.disable_refused")
        if row is None:
            return False
        await conn.execute(
            update(User)
            .where(User.id == user_id)
            .values(totp_enabled=False, totp_secret=None, totp_last_step=0, recovery_codes=[])
        )
        await audit(conn, origin, "2fa.disabled", user_id, row.username)
    return True


async def change_password(
    engine: AsyncEngine,
    user_id: int,
    current: object,
    new: object,
    origin: Origin,
) -> tuple[bool, str]:
    """Change one's own password; every other session of the account ends."""
    if not isinstance(current, str) or not isinstance(new, str):
        return False, "Fill in both passwords."
    problems = password_problems(new)
    if problems:
        return False, "The new password needs " + ", ".join(problems) + "."
    async with engine.begin() as conn:
        row = await _recheck_password(conn, user_id, current, origin, "password.change_refused")
        if row is None:
            return False, "Your current password is not right; nothing was changed."
        hashed = await asyncio.to_thread(hash_password, new)
        await conn.execute(
            update(User)
            .where(User.id == user_id)
            .values(password_hash=hashed, session_version=User.session_version + 1)
        )
        await audit(conn, origin, "password.changed", user_id, row.username)
    return True, "Password changed. Other sessions of your account have been signed out."
