"""The frame every use case runs in: one transaction, idempotent by client id, outbox + audit.

A use case is an async function of a :class:`Tx`. It reads and writes through ``tx.conn``,
raises :class:`RuleBroken` to refuse, records events with ``tx.emit`` and audit entries with
``tx.audit``, and returns an :class:`Answer`. :func:`run` does the rest:

* a client id seen before returns the stored first answer and writes nothing;
* a refusal rolls back everything the use case did, then records the refusal (so a replay
  answers the same) — except :class:`BadInput`, which records nothing at all;
* events and audit rows are written in the same transaction as the change.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from traitortrack.db.models import Audit, Event, Scan
from traitortrack.domain.events import Event as PublishedEvent
from traitortrack.domain.events import NewEvent
from traitortrack.domain.outcomes import BadInput, Outcome, RuleBroken
from traitortrack.domain.roles import Permission, Role, can

log = logging.getLogger(__name__)

MAX_CLIENT_ID_LENGTH = 64


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
    conn: AsyncConnection
    actor: Actor
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


async def run(engine: AsyncEngine, actor: Actor, client_id: object, plan: Plan) -> Result:
    """Validate with ``plan`` (pure: it raises :class:`BadInput`), then run its use case once
    per (user, client id). Bad input of any kind comes back as a rejection, never an exception."""
    try:
        checked_id = check_client_id(client_id)
        command, use_case = plan()
    except BadInput as error:
        return rejected(error)
    async with engine.connect() as conn:
        try:
            return await _run_once(conn, actor, command, checked_id, use_case)
        except _AlreadyRecorded:
            await conn.rollback()
        except BadInput as error:
            await conn.rollback()
            return rejected(error)
        except RuleBroken as error:
            await conn.rollback()
            return await _record_refusal(conn, actor, command, checked_id, error)
        except IntegrityError:
            # A constraint caught a race the code's checks could not see (e.g. a bag deleted
            # while it was being linked). Nothing was written; a retry sees the new state.
            await conn.rollback()
            log.warning("command hit a constraint", extra={"action": command.action})
            return rejected(
                BadInput(
                    "CONFLICT", "That bag changed while saving; nothing was saved. Scan again."
                )
            )
        async with conn.begin():
            stored = await _stored(conn, actor, checked_id)
        if stored is None:  # pragma: no cover - the conflicting row was committed
            raise RuntimeError("client id conflict without a stored answer")
        return stored


async def _run_once(
    conn: AsyncConnection, actor: Actor, command: Command, client_id: str, use_case: UseCase
) -> Result:
    async with conn.begin():
        stored = await _stored(conn, actor, client_id)
        if stored is not None:
            return stored
        tx = Tx(conn, actor)
        answer = await use_case(tx)
        if not await _insert_scan(conn, actor, command, client_id, answer, None):
            raise _AlreadyRecorded
        published = await write_outbox(tx)
    return Result(answer.outcome, answer.message, None, answer.data, published)


async def _record_refusal(
    conn: AsyncConnection, actor: Actor, command: Command, client_id: str, error: RuleBroken
) -> Result:
    answer = Answer(Outcome.REJECTED, error.message)
    try:
        async with conn.begin():
            if await _insert_scan(conn, actor, command, client_id, answer, error.code):
                return rejected(error)
            stored = await _stored(conn, actor, client_id)
    except DBAPIError:
        # Recording a refusal is best effort: the refusal itself stands either way.
        log.exception("could not record a refused command", extra={"action": command.action})
        return rejected(error)
    return stored or rejected(error)


async def _stored(conn: AsyncConnection, actor: Actor, client_id: str) -> Result | None:
    row = (
        await conn.execute(
            select(Scan.outcome, Scan.message, Scan.error, Scan.result).where(
                Scan.user_id == actor.user_id, Scan.client_id == client_id
            )
        )
    ).one_or_none()
    if row is None:
        return None
    return Result(Outcome(row.outcome), row.message, row.error, row.result, (), replayed=True)


async def _insert_scan(
    conn: AsyncConnection,
    actor: Actor,
    command: Command,
    client_id: str,
    answer: Answer,
    error: str | None,
) -> bool:
    statement = (
        pg_insert(Scan)
        .values(
            user_id=actor.user_id,
            client_id=client_id,
            action=command.action,
            code=command.code,
            parent_code=command.parent_code,
            area=command.area if command.area is not None else actor.area,
            outcome=answer.outcome.value,
            error=error,
            message=answer.message,
            result=answer.data,
        )
        .on_conflict_do_nothing(index_elements=[Scan.user_id, Scan.client_id])
        .returning(Scan.id)
    )
    return (await conn.execute(statement)).first() is not None


async def write_outbox(tx: Tx) -> tuple[PublishedEvent, ...]:
    if tx.audits:
        await tx.conn.execute(insert(Audit), tx.audits)
    if not tx.events:
        return ()
    rows = (
        await tx.conn.execute(
            insert(Event)
            .values([{"kind": e.kind.value, "area": e.area, "payload": e.data} for e in tx.events])
            .returning(Event.id, Event.at)
        )
    ).all()
    return tuple(
        PublishedEvent(row.id, e.kind.value, row.at.isoformat(), e.area, e.data)
        for row, e in zip(rows, tx.events, strict=True)
    )
