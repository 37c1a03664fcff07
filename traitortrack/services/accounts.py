"""Signing in: passwords with lockout, TOTP without replay, recovery codes (SPEC §5).

Every outcome is audited in the same transaction as the change it records.
"""

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, any_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.models import Audit, User, UserSession
from traitortrack.domain.events import Event, user_changed
from traitortrack.domain.roles import Role
from traitortrack.security import (
    burn_password_check,
    hash_password,
    hash_recovery_code,
    hash_token,
    new_recovery_codes,
    new_token,
    password_problems,
    totp_step,
    verify_password,
)
from traitortrack.services.commands import Actor, Tx, write_outbox

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
INVALID = "Invalid username or password."
INACTIVITY_LIMIT = timedelta(minutes=30)
SHIFT_LENGTH = timedelta(hours=12)
INACTIVITY_ROLES = frozenset({Role.ADMIN, Role.BILLER})
# A session's last use is written at most this often: an idle limit of 30 minutes needs no
# finer record, and a page that loads ten resources must not cost ten writes.
SEEN_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Account:
    """The signed-in person, as the web layer needs them on every request."""

    id: int
    username: str
    role: Role
    area: str | None
    session_version: int
    totp_enabled: bool
    # The server-side session a request or socket came with (none outside one).
    session: str | None = None
    signed_in_at: float = 0.0  # epoch seconds
    seen_at: float = 0.0

    @property
    def auth_id(self) -> str:
        """What the session cookie carries."""
        return f"{self.id}.{self.session_version}.{self.session}"

    @property
    def audience(self) -> frozenset[str] | None:
        """The dispatch areas this person may see (None: all): a dispatcher sees their own."""
        return frozenset({self.area}) if self.role == Role.DISPATCHER and self.area else None

    @property
    def deadline(self) -> float:
        """When this session ends (epoch seconds): 30 minutes idle for admins and billers, the
        end of a 12-hour shift for everyone else."""
        if self.role in INACTIVITY_ROLES:
            return self.seen_at + INACTIVITY_LIMIT.total_seconds()
        return self.signed_in_at + SHIFT_LENGTH.total_seconds()


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


def _split_auth_id(auth_id: str | None) -> tuple[int, int, str] | None:
    """A session cookie's id: ``user id.session version.session token``."""
    parts = (auth_id or "").split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or not parts[2]:
        return None
    return int(parts[0]), int(parts[1]), parts[2]


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
    """The account behind a session, or None when the session was ended (signed out, revoked)
    or the account deactivated or deleted. Whether the session has run out is the caller's
    question (``Account.deadline``): it depends on the caller's clock."""
    parsed = _split_auth_id(auth_id)
    if parsed is None:
        return None
    user_id, version, token = parsed
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(*_ACCOUNT_COLUMNS, UserSession.signed_in_at, UserSession.seen_at)
                .join(UserSession, UserSession.user_id == User.id)
                .where(
                    User.active,
                    User.id == user_id,
                    User.session_version == version,
                    UserSession.token_hash == hash_token(token),
                )
            )
        ).one_or_none()
    if row is None:
        return None
    return Account(
        row.id,
        row.username,
        Role(row.role),
        row.area,
        row.session_version,
        row.totp_enabled,
        session=token,
        signed_in_at=row.signed_in_at.timestamp(),
        seen_at=row.seen_at.timestamp(),
    )


async def start_session(engine: AsyncEngine, who: Account, now: datetime) -> str:
    """Open a server-side session for ``who``; returns the id its cookie carries. Sessions of
    the account that ran out long ago are cleared on the way."""
    token = new_token()
    async with engine.begin() as conn:
        await conn.execute(
            delete(UserSession).where(
                UserSession.user_id == who.id,
                UserSession.seen_at < now - SHIFT_LENGTH,
                UserSession.signed_in_at < now - SHIFT_LENGTH,
            )
        )
        await conn.execute(
            insert(UserSession).values(
                token_hash=hash_token(token), user_id=who.id, signed_in_at=now, seen_at=now
            )
        )
    return replace(who, session=token).auth_id


async def session_seen(engine: AsyncEngine, who: Account, now: datetime) -> Account:
    """Record that the session is in use (at most once a ``SEEN_EVERY``); returns the account
    with its new deadline."""
    if who.session is None or now.timestamp() - who.seen_at < SEEN_EVERY.total_seconds():
        return who
    await session_seen_at(engine, who.auth_id, now)
    return replace(who, seen_at=now.timestamp())


async def session_seen_at(engine: AsyncEngine, auth_id: str, now: datetime) -> None:
    parsed = _split_auth_id(auth_id)
    if parsed is None:
        return
    async with engine.begin() as conn:
        await conn.execute(
            update(UserSession)
            .where(UserSession.token_hash == hash_token(parsed[2]))
            .values(seen_at=now)
        )


async def end_session(engine: AsyncEngine, who: Account, origin: Origin) -> tuple[Event, ...]:
    """Sign out: the session is gone for good (a replayed cookie is refused), and the
    ``user.changed`` event makes every worker re-check this account's sockets at once."""
    if who.session is None:
        return ()
    actor = Actor(who.id, who.username, who.role, who.area, origin.request_id, origin.ip)
    async with engine.begin() as conn:
        await conn.execute(
            delete(UserSession).where(UserSession.token_hash == hash_token(who.session))
        )
        tx = Tx(conn, actor, (await conn.get_raw_connection()).driver_connection)
        tx.audit("logout", "user", who.username)
        tx.emit(user_changed(who.id))
        return await write_outbox(tx)


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
