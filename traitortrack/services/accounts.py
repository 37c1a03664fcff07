"""Signing in: passwords with pauses, TOTP without replay, recovery codes (SPEC §5).

Every outcome is audited in the same transaction as the change it records.

Failed passwords pause the (account, client address) pair, never the whole account, so nobody
can lock the real user out from elsewhere. Unknown user, wrong password, paused address and
deactivated account get one answer after the same bcrypt work, so neither the words nor the
time of the answer tell whether an account exists. The real user learns of pauses from the
audit log and the health page.
"""

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, any_, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.models import Audit, SignInGuard, User, UserSession
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
MAX_WRONG_CODES = 5
PAUSE = timedelta(minutes=15)
# Ten addresses paused at once (some fifty failures within a pause) is a guessing attack spread
# over many addresses: every other address then gets one try per pause instead of five.
UNDER_ATTACK_AT = 10
SIGN_IN_REFUSED = (
    "Invalid username or password. After repeated failures, sign-in from this device is "
    "paused for 15 minutes."
)
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
    """Where a security event came from: ``ip`` anonymised for the audit log, ``client`` a
    keyed hash of the address for counting failed sign-ins."""

    request_id: str | None = None
    ip: str | None = None
    client: str = "unknown"


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
    return replace(
        _account(row),
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
                # Last used over a shift ago: over by every limit (never seen before signing in).
                UserSession.seen_at < now - SHIFT_LENGTH,
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


async def _claim_guard(conn: AsyncConnection, user_id: int, client: str) -> Row[Any]:
    """The failure record of this account from this address, locked: attempts from one
    address are counted one at a time, so a burst of them cannot slip past the pause."""
    await conn.execute(
        pg_insert(SignInGuard).values(user_id=user_id, client=client).on_conflict_do_nothing()
    )
    return (
        await conn.execute(
            select(SignInGuard.failures, SignInGuard.last_failure_at, SignInGuard.locked_until)
            .where(SignInGuard.user_id == user_id, SignInGuard.client == client)
            .with_for_update()
        )
    ).one()


def _paused(until: datetime | None, now: datetime) -> bool:
    return until is not None and until > now


async def _count_failure(
    conn: AsyncConnection,
    user_id: int,
    username: str,
    guard: Row[Any],
    now: datetime,
    origin: Origin,
) -> None:
    recent = guard.last_failure_at is not None and guard.last_failure_at > now - PAUSE
    failures = (guard.failures if recent else 0) + 1
    paused_elsewhere = (
        await conn.execute(
            select(func.count())
            .select_from(SignInGuard)
            .where(SignInGuard.user_id == user_id, SignInGuard.locked_until > now)
        )
    ).scalar_one()
    under_attack = paused_elsewhere >= UNDER_ATTACK_AT
    allowed = 1 if under_attack else MAX_FAILED_LOGINS
    pause = failures >= allowed
    await conn.execute(
        update(SignInGuard)
        .where(SignInGuard.user_id == user_id, SignInGuard.client == origin.client)
        .values(
            failures=0 if pause else failures,
            last_failure_at=now,
            locked_until=now + PAUSE if pause else None,
        )
    )
    if pause:
        await audit(conn, origin, "login.locked", user_id, username, under_attack=under_attack)
    else:
        await audit(conn, origin, "login.failed", user_id, username, failures=failures)


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
                select(*_ACCOUNT_COLUMNS, User.password_hash, User.active).where(
                    func.lower(User.username) == func.lower(username)
                )
            )
        ).one_or_none()
        if row is None:
            await asyncio.to_thread(burn_password_check, password)
            await audit(conn, origin, "login.unknown_user", None, None)
            return SignIn(None, SIGN_IN_REFUSED)
        guard = await _claim_guard(conn, row.id, origin.client)
        # Checked whatever the answer will be: a paused address must take as long as a try.
        correct = await asyncio.to_thread(verify_password, password, row.password_hash)
        if _paused(guard.locked_until, now):
            await audit(conn, origin, "login.while_locked", row.id, row.username)
        elif correct and row.active:
            stale = func.greatest(SignInGuard.last_failure_at + PAUSE, SignInGuard.locked_until)
            await conn.execute(
                delete(SignInGuard).where(
                    SignInGuard.user_id == row.id,
                    or_(SignInGuard.client == origin.client, stale <= now),
                )
            )
            await conn.execute(update(User).where(User.id == row.id).values(last_login_at=now))
            await audit(conn, origin, "login.password_ok", row.id, row.username)
            return SignIn(_account(row), "Signed in.", needs_totp=row.totp_enabled)
        elif correct:
            await audit(conn, origin, "login.inactive", row.id, row.username)
        else:
            await _count_failure(conn, row.id, row.username, guard, now, origin)
        return SignIn(None, SIGN_IN_REFUSED)


async def _spend_code(
    conn: AsyncConnection, user_id: int, secret: str, code: str, now: datetime
) -> tuple[str, dict[str, Any]]:
    """Accept a TOTP code once (a later time step than any accepted before) or an unused
    recovery code, which is then spent; the audit action and details of the outcome."""
    accepted = {"totp_failures": 0, "totp_locked_until": None}
    step = totp_step(secret, code, now)
    if step is not None:
        done = await conn.execute(
            update(User)
            .where(User.id == user_id, User.totp_last_step < step)
            .values(totp_last_step=step, **accepted)
            .returning(User.id)
        )
        return ("2fa.ok" if done.first() is not None else "2fa.replay"), {}
    hashed = hash_recovery_code(code)
    spent = await conn.execute(
        update(User)
        .where(User.id == user_id, hashed == any_(User.recovery_codes))
        .values(recovery_codes=func.array_remove(User.recovery_codes, hashed), **accepted)
        .returning(func.cardinality(User.recovery_codes))
    )
    left = spent.scalar_one_or_none()
    if left is not None:
        return "2fa.recovery_code", {"left": left}
    return "2fa.failed", {}


async def verify_second_factor(
    engine: AsyncEngine, user_id: int, code: object, now: datetime, origin: Origin
) -> bool:
    """A TOTP or recovery code for the second step of signing in. Five wrong codes in a row
    pause the second factor for 15 minutes, right codes included."""
    if not isinstance(code, str) or not code.strip() or len(code) > 64:
        return False
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(User.username, User.totp_secret, User.totp_failures, User.totp_locked_until)
                .where(User.id == user_id, User.totp_enabled)
                .with_for_update()
            )
        ).one_or_none()
        if row is None or row.totp_secret is None:
            return False
        if _paused(row.totp_locked_until, now):
            await audit(conn, origin, "2fa.while_locked", user_id, row.username)
            return False
        action, details = await _spend_code(conn, user_id, row.totp_secret, code, now)
        if action in {"2fa.ok", "2fa.recovery_code"}:
            await audit(conn, origin, action, user_id, row.username, **details)
            return True
        failures = row.totp_failures + 1
        if failures >= MAX_WRONG_CODES:
            action = "2fa.locked"
            values = {"totp_failures": 0, "totp_locked_until": now + PAUSE}
        else:
            values = {"totp_failures": failures}
        await conn.execute(update(User).where(User.id == user_id).values(**values))
        await audit(conn, origin, action, user_id, row.username, failures=failures)
        return False


@dataclass(frozen=True, slots=True)
class Pause:
    """An account someone keeps failing to sign in to, for the admins' health page."""

    username: str
    paused_addresses: int
    second_factor_until: datetime | None


async def select_pauses(engine: AsyncEngine, now: datetime) -> list[Pause]:
    paused = (
        select(SignInGuard.user_id, func.count().label("addresses"))
        .where(SignInGuard.locked_until > now)
        .group_by(SignInGuard.user_id)
        .subquery()
    )
    second_factor = User.totp_locked_until > now
    query = (
        select(
            User.username,
            func.coalesce(paused.c.addresses, 0),
            case((second_factor, User.totp_locked_until)),
        )
        .outerjoin(paused, paused.c.user_id == User.id)
        .where(or_(paused.c.addresses.is_not(None), second_factor))
        .order_by(func.lower(User.username))
    )
    async with engine.connect() as conn:
        return [Pause(*row) for row in await conn.execute(query)]


async def lift_pauses(conn: AsyncConnection, user_id: int) -> None:
    """After an admin's password reset or reactivation the person may sign in again at once,
    from anywhere."""
    await conn.execute(delete(SignInGuard).where(SignInGuard.user_id == user_id))
    await conn.execute(
        update(User).where(User.id == user_id).values(totp_failures=0, totp_locked_until=None)
    )


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
