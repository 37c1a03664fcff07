"""The frame every use case runs in: one transaction, idempotent by client id, outbox + audit.

A use case is an async function of a :class:`Tx`. It reads and writes through ``tx.conn``,
raises :class:`RuleBroken` to refuse, records events with ``tx.emit`` and audit entries with
``tx.audit``, and returns an :class:`Answer`. :func:`run` does the rest:

* a client id seen before returns the stored first answer and writes nothing;
* a refusal rolls back everything the use case did, then records the refusal (so a replay
  answers the same) — except :class:`BadInput`, which records nothing at all;
* events and audit rows are written in the same transaction as the change.
"""

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.engine import is_unavailable
from traitortrack.domain.events import Event as PublishedEvent
from traitortrack.domain.events import NewEvent
from traitortrack.domain.linking import outside_area
from traitortrack.domain.outcomes import BadInput, Outcome, RuleBroken
from traitortrack.domain.roles import Permission, Role, can

log = logging.getLogger(__name__)

MAX_CLIENT_ID_LENGTH = 64
CHANGED_WHILE_SAVING = BadInput(
    "CONFLICT", "That bag changed while saving; nothing was saved. Scan again."
)
# Every wait of a command is bounded: a row held elsewhere (an admin's long transaction, a
# stuck client) refuses the command as busy after LOCK_WAIT_S; a statement that runs past
# STATEMENT_LIMIT_S (an overloaded database) is cancelled and the command is not saved.
LOCK_WAIT_S = 1.0
STATEMENT_LIMIT_S = 5.0


class NotSaved(Exception):
    """The database could not be reached, lost the connection or could not answer in time:
    nothing was saved, and the same message (same client id) may be sent again."""


class ConnectionLost(NotSaved):
    """The connection closed under the command. Often only that connection died (its backend
    was killed, or it died in the pool unnoticed): a fresh one may well work."""


def busy(code: str | None) -> BadInput:
    """A row stayed locked past the lock wait. Not recorded: the same scan sent again, once the
    row is free, is tried afresh."""
    what = code or "That record"
    return BadInput("BUSY", f"{what} is busy (someone else is changing it); send the scan again.")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is asking, and from where (request id and anonymised IP feed the audit log)."""

    user_id: int
    username: str
    role: Role
    area: str | None = None
    request_id: str | None = None
    ip: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


@dataclass(frozen=True, slots=True)
class Answer:
    """What a use case found, before it is recorded."""

    outcome: Outcome
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one command, as acknowledged to the client."""

    outcome: Outcome
    message: str
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    events: tuple[PublishedEvent, ...] = ()
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.OK


@dataclass(slots=True)
class Tx:
    """A use case's transaction: ``pg`` is the asyncpg connection (the fast path) and ``conn``
    the same connection as SQLAlchemy sees it; both are inside the one transaction."""

    conn: AsyncConnection
    actor: Actor
    pg: asyncpg.Connection
    events: list[NewEvent] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, event: NewEvent) -> None:
        self.events.append(event)

    def audit(
        self,
        action: str,
        entity_type: str,
        entity_id: str | None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        self.audits.append(
            {
                "actor_id": self.actor.user_id,
                "actor_name": self.actor.username,
                "action": action,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "before": before,
                "after": after,
                "request_id": self.actor.request_id,
                "ip": self.actor.ip,
            }
        )


@dataclass(frozen=True, slots=True)
class Command:
    """What is recorded about a command besides its answer."""

    action: str
    code: str | None = None
    parent_code: str | None = None
    area: str | None = None


UseCase = Callable[[Tx], Awaitable[Answer]]
Planned = tuple[Command, UseCase]
Plan = Callable[[], Planned]


class _AlreadyRecorded(Exception):
    """A concurrent call with the same client id committed first."""


def rejected(error: RuleBroken) -> Result:
    return Result(Outcome.REJECTED, error.message, error=error.code)


def require(actor: Actor, permission: Permission) -> None:
    if not can(actor.role, permission):
        raise BadInput("FORBIDDEN", "Your role does not allow this. Ask an admin if you need it.")


def check_area(actor: Actor, code: str, bag_area: str | None) -> None:
    """Dispatchers work only on their own area's bags; everyone else sees all areas."""
    if actor.role == Role.DISPATCHER and bag_area != actor.area:
        raise outside_area(code, bag_area, actor.area)


def check_client_id(client_id: object) -> str:
    if (
        not isinstance(client_id, str)
        or not 1 <= len(client_id) <= MAX_CLIENT_ID_LENGTH
        or not client_id.isascii()
        or not client_id.isprintable()
    ):
        raise BadInput(
            "INVALID_CLIENT_ID",
            f"Each request needs a client id: 1-{MAX_CLIENT_ID_LENGTH} printable ASCII characters.",
        )
    return client_id


@asynccontextmanager
async def connect(engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, asyncpg.Connection]]:
    """A pooled connection as SQLAlchemy and as asyncpg see it.

    The scan path speaks to asyncpg directly (SQLAlchemy's per-statement work would cost several
    times the database's); the SQLAlchemy face runs in autocommit mode so that its statements
    join the asyncpg transaction the caller opens. When the database is unavailable (see
    :func:`~traitortrack.db.engine.is_unavailable`) the caller gets :class:`NotSaved`.
    """
    pg: asyncpg.Connection | None = None
    try:
        async with engine.connect() as connection:
            conn = await connection.execution_options(isolation_level="AUTOCOMMIT")
            pg = (await conn.get_raw_connection()).driver_connection
            try:
                yield conn, pg
            finally:
                if pg.is_closed():
                    # SQLAlchemy never saw the statement that failed (it ran on asyncpg): tell
                    # the pool, or it hands the dead connection to the next caller.
                    await conn.invalidate()
    except NotSaved:
        raise
    except Exception as error:
        if pg is not None and pg.is_closed():
            raise ConnectionLost(repr(error)) from error
        if is_unavailable(error):
            raise NotSaved(repr(error)) from error
        raise


@asynccontextmanager
async def transaction(
    pg: asyncpg.Connection, lock_wait_s: float = LOCK_WAIT_S
) -> AsyncIterator[None]:
    """A transaction whose waits are bounded (see ``LOCK_WAIT_S``): a lock not granted in time
    raises ``asyncpg.LockNotAvailableError``. The limits are set with ``BEGIN``, in the same
    round trip."""
    await pg.execute(
        f"BEGIN; SET LOCAL lock_timeout = {int(lock_wait_s * 1000)};"
        f" SET LOCAL statement_timeout = {int(STATEMENT_LIMIT_S * 1000)}"
    )
    try:
        yield
    except BaseException:
        if not pg.is_closed():
            await pg.execute("ROLLBACK")
        raise
    await pg.execute("COMMIT")


async def run(engine: AsyncEngine, actor: Actor, client_id: object, plan: Plan) -> Result:
    """Validate with ``plan`` (pure: it raises :class:`BadInput`), then run its use case once
    per (user, client id). Bad input of any kind comes back as a rejection, never an exception."""
    try:
        checked_id = check_client_id(client_id)
        command, use_case = plan()
    except BadInput as error:
        return rejected(error)
    try:
        return await _run_once(engine, actor, checked_id, command, use_case)
    except ConnectionLost as error:
        # Once more on a fresh connection; the client id makes a repeat harmless.
        log.warning("connection lost; command tried again", extra={"error": str(error)})
        return await _run_once(engine, actor, checked_id, command, use_case)


async def _run_once(
    engine: AsyncEngine, actor: Actor, checked_id: str, command: Command, use_case: UseCase
) -> Result:
    async with connect(engine) as (conn, pg):
        tx = Tx(conn, actor, pg)
        try:
            async with transaction(pg):
                answer = await use_case(tx)
                published = await _record(tx, command, checked_id, answer, None)
                if published is None:
                    raise _AlreadyRecorded
            return Result(answer.outcome, answer.message, None, answer.data, published)
        except _AlreadyRecorded:
            pass
        except BadInput as error:
            return rejected(error)
        except asyncpg.LockNotAvailableError:
            return rejected(busy(command.code))
        except RuleBroken as error:
            return await _record_refusal(tx, command, checked_id, error)
        except (IntegrityError, asyncpg.IntegrityConstraintViolationError):
            # A constraint caught a race the code's checks could not see (e.g. a bag deleted
            # while it was being linked). Nothing was written; a retry sees the new state.
            log.warning("command hit a constraint", extra={"action": command.action})
            return rejected(CHANGED_WHILE_SAVING)
        stored = await _stored(pg, actor, checked_id)
        if stored is None:  # pragma: no cover - the conflicting row was committed
            raise RuntimeError("client id conflict without a stored answer")
        return stored


async def _record_refusal(tx: Tx, command: Command, client_id: str, error: RuleBroken) -> Result:
    answer = Answer(Outcome.REJECTED, error.message)
    tx.events.clear()
    tx.audits.clear()
    try:
        async with transaction(tx.pg):
            if await _record(tx, command, client_id, answer, error.code) is not None:
                return rejected(error)
        stored = await _stored(tx.pg, tx.actor, client_id)
    except (asyncpg.PostgresError, OSError):
        # Recording a refusal is best effort: the refusal itself stands either way.
        log.exception("could not record a refused command", extra={"action": command.action})
        return rejected(error)
    return stored or rejected(error)


_STORED = """
    SELECT outcome, message, error, result FROM scan WHERE user_id = $1 AND client_id = $2
"""

# One round trip for the idempotency record and the outbox: no event is written when the
# client id was already recorded (a concurrent or earlier call with the same id won).
_RECORD = """
    WITH recorded AS (
        INSERT INTO scan (user_id, client_id, action, code, parent_code, area,
                          outcome, error, message, result)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)
        ON CONFLICT (user_id, client_id) DO NOTHING
        RETURNING id
    ), written AS (
        INSERT INTO event (kind, area, payload)
        SELECT e.kind, e.area, e.payload::jsonb
        FROM recorded, unnest($11::text[], $12::text[], $13::text[]) WITH ORDINALITY
             AS e(kind, area, payload, n)
        ORDER BY e.n
        RETURNING id, at
    )
    SELECT (SELECT count(*) FROM recorded) AS recorded, written.id, written.at
    FROM (SELECT 1) AS one LEFT JOIN written ON true
    ORDER BY written.id
"""

_AUDIT = """
    INSERT INTO audit (actor_id, actor_name, action, entity_type, entity_id, before, after,
                       request_id, ip)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)
"""


def json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


async def _stored(pg: asyncpg.Connection, actor: Actor, client_id: str) -> Result | None:
    row = await pg.fetchrow(_STORED, actor.user_id, client_id)
    return None if row is None else stored_result(row)


def stored_result(row: asyncpg.Record) -> Result:
    """The first answer to a client id, as recorded (outcome, message, error, result)."""
    return Result(Outcome(row["outcome"]), row["message"], row["error"], row["result"], (), True)


async def _record(
    tx: Tx, command: Command, client_id: str, answer: Answer, error: str | None
) -> tuple[PublishedEvent, ...] | None:
    """Record the answer under its client id and write the outbox; None when the id was taken."""
    actor = tx.actor
    rows = await tx.pg.fetch(
        _RECORD,
        actor.user_id,
        client_id,
        command.action,
        command.code,
        command.parent_code,
        command.area if command.area is not None else actor.area,
        answer.outcome.value,
        error,
        answer.message,
        json_text(answer.data),
        [e.kind.value for e in tx.events],
        [e.area for e in tx.events],
        [json_text(e.data) for e in tx.events],
    )
    if rows[0]["recorded"] == 0:
        return None
    await _write_audits(tx)
    return (
        tuple(
            PublishedEvent(row["id"], e.kind.value, row["at"].isoformat(), e.area, e.data)
            for row, e in zip(rows, tx.events, strict=True)
        )
        if tx.events
        else ()
    )


async def _write_audits(tx: Tx) -> None:
    if tx.audits:
        await tx.pg.executemany(
            _AUDIT,
            [
                (
                    a["actor_id"],
                    a["actor_name"],
                    a["action"],
                    a["entity_type"],
                    a["entity_id"],
                    json_text(a["before"]),
                    json_text(a["after"]),
                    a["request_id"],
                    a["ip"],
                )
                for a in tx.audits
            ],
        )


_OUTBOX = """
    INSERT INTO event (kind, area, payload)
    SELECT e.kind, e.area, e.payload::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS e(kind, area, payload, n)
    ORDER BY e.n
    RETURNING id, at
"""


async def write_outbox(tx: Tx) -> tuple[PublishedEvent, ...]:
    """Write the audit rows and events a use case collected (for changes outside ``run``)."""
    await _write_audits(tx)
    if not tx.events:
        return ()
    rows = await tx.pg.fetch(
        _OUTBOX,
        [e.kind.value for e in tx.events],
        [e.area for e in tx.events],
        [json_text(e.data) for e in tx.events],
    )
    return tuple(
        PublishedEvent(row["id"], e.kind.value, row["at"].isoformat(), e.area, e.data)
        for row, e in zip(rows, tx.events, strict=True)
    )
