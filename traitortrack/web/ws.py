"""``/ws``: the live connection of scanners, wall displays and admins (SPEC §8).

The view is the handshake: it checks the origin and the session, decides the socket's audience
(role, dispatch area) once, and hands the socket off (``wire.hand_off``), to be accepted and
served with nothing of the handshake kept. Its task sends; what the client sends is handled
where the server reads it (``Socket.serve``). The worker's session sweeper (``Live``) closes
sockets whose session or display link has ended.
"""

import asyncio
import logging
import math
import uuid
from dataclasses import replace
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, Response, session, websocket
from quart_auth import current_user
from sqlalchemy.exc import SQLAlchemyError

from traitortrack.domain.codes import InvalidBagCode, normalize_code
from traitortrack.domain.roles import Role
from traitortrack.logs import bind_request_id
from traitortrack.realtime.hub import TOO_SLOW, Connection, Grant, SessionCheck, encode
from traitortrack.realtime.outbox import replay_after
from traitortrack.runtime import Runtime, runtime
from traitortrack.security import anonymize_ip
from traitortrack.services import accounts
from traitortrack.services.accounts import Account
from traitortrack.services.commands import Actor, NotSaved
from traitortrack.services.people import DisplayAccess, display_link_access
from traitortrack.web.access import public
from traitortrack.web.commands import BadMessage, perform
from traitortrack.web.inputs import BadInput, decode_json
from traitortrack.web.wire import Socket, hand_off, keep_sockets_lean

blueprint = Blueprint("ws", __name__)
log = logging.getLogger(__name__)

HELLO_WAIT_S = 1.0
MAX_REPLAY = 5_000
REPLAY_FRAME = 500
SESSION_CHECK_S = 30.0
SIGNED_OUT = (
    "Not saved: your session has ended or your access has changed. Sign in again, then send it."
)
DATABASE_DOWN = "Not saved: the database is not answering. Send it again."
FAILED = "Not saved: something went wrong on our side. Send it again."


def _same_origin() -> bool:
    """Browsers always send Origin; a foreign one is a cross-site websocket hijack attempt."""
    origin = websocket.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == websocket.host


async def _account() -> Account | None:
    who = await accounts.load_account(runtime().engine, current_user.auth_id)
    if who is None or runtime().clock().timestamp() > who.deadline:
        return None
    return who


async def _display() -> DisplayAccess | None:
    link_id = session.get("display_link")
    if not isinstance(link_id, int):
        return None
    return await display_link_access(runtime().engine, link_id)


@blueprint.websocket("/ws")
@public
async def ws() -> Response | None:
    if not _same_origin():
        return Response("Cross-site websocket refused.", 403)
    state = runtime()
    # Hundreds of walls reconnecting at once (a deploy, a Wi-Fi blip) must not take every
    # pooled connection from the scans: their lookups take turns on a few of them.
    async with state.handshakes:
        who = await _account()
        display = None if who is not None else await _display()
    if who is None and display is None:
        return Response("Sign in first (POST /login), then open /ws.", 401)
    view = websocket.args.get("view", "")
    if who is not None and state.live.hub.sockets_of(who.id) >= state.quotas.sockets:
        await state.quotas.tripped("sockets", who.id, who.username, _origin())
        return Response(state.quotas.too_many_sockets, 429)
    if who is not None:
        connection = Connection(
            who.role,
            who.audience,
            coalesced=view in {"wall", "metrics"},
            metrics=who.role == Role.ADMIN and view == "metrics",
            follows_parent=view == "scanner",
            username=who.username,
            user_id=who.id,
            deadline=who.deadline,
        )
    else:
        connection = Connection(None, display.audience, coalesced=True)
    connection.session = _session_check(state, who)
    connection.check_at = _loop_time() + SESSION_CHECK_S
    actor = _actor(who) if who is not None else None
    hand_off(partial(_serve, state, connection, who.area if who else None, actor))
    return None


async def _serve(
    state: Runtime, connection: Connection, area: str | None, actor: Actor | None, socket: Socket
) -> None:
    connection.ping = socket.pinger
    try:
        first = await _start(state, connection, area, socket)
        if first is not None:
            await _handle(state, connection, actor, first)
        await socket.serve(
            partial(_on_message, state, connection, actor), _send(connection, socket)
        )
    finally:
        state.live.hub.unregister(connection)


async def _start(state: Runtime, connection: Connection, area: str | None, socket: Socket) -> Any:
    """Register, then send the welcome and the replay; returns the first message if it was not
    a hello. (Its own frame: the welcome, counters and replay frames are not kept for the
    socket's lifetime, which for a wall display is days.)"""
    hub = state.live.hub
    position, counters = hub.register(connection)
    if connection.restarting:  # opened while the worker drains: closed 1012 at once
        return None
    first = await _first_message(socket)
    hello = first if isinstance(first, dict) and first.get("type") == "hello" else None
    welcome = {
        "type": "welcome",
        "role": str(connection.role or "display"),
        "area": area,
        "last_event_id": position,
        "counters": counters,
    }
    replay: list[str] = []
    if hello is not None:
        async with state.handshakes:
            replay = await _replay(state, connection, hello.get("last_event_id"), position)
    if hello is not None and (parent := _parent_code(hello.get("parent"))) is not None:
        hub.follow(connection, parent)
    # Live frames held since ``register`` come after these (welcome, then replay in order).
    connection.go_live([encode(welcome), *replay])
    return first if hello is None else None


def _actor(who: Account) -> Actor:
    return Actor(
        who.id, who.username, who.role, who.area, None, anonymize_ip(websocket.remote_addr)
    )


def _origin(actor: Actor | None = None) -> accounts.Origin:
    """Where a socket's security event came from (its handshake's address, no request id)."""
    return accounts.Origin(None, actor.ip if actor else anonymize_ip(websocket.remote_addr))


async def _first_message(socket: Socket) -> Any:
    try:
        async with asyncio.timeout(HELLO_WAIT_S):
            return _parse(await socket.receive())
    except TimeoutError:
        return None


def _parse(raw: str | bytes) -> Any:
    """The message, or the ``BadInput`` saying why it cannot be read (answered as an error)."""
    try:
        return decode_json(raw)
    except BadInput as error:
        return error


async def _replay(state: Runtime, connection: Connection, last: object, position: int) -> list[str]:
    """The frames that bring a client from ``last`` up to ``position`` (the welcome's id),
    including ids at or below ``last`` that committed after it passed them."""
    if last is None:
        return []
    if not isinstance(last, int) or isinstance(last, bool) or last < 0:
        return [_error("'last_event_id' must be a whole number or null.")]
    async with state.engine.connect() as conn:
        areas = sorted(connection.audience) if connection.audience is not None else None
        missed = await replay_after(conn, last, position, areas, MAX_REPLAY)
    if missed is None or missed.more:
        return [encode({"type": "resync", "reason": "too far behind: reload"})]
    events = missed.events
    return [
        encode({"type": "events", "events": [e.to_json() for e in events[i : i + REPLAY_FRAME]]})
        for i in range(0, len(events), REPLAY_FRAME)
    ]


def _parent_code(raw: object) -> str | None:
    """The parent a scanner says it works on; anything that is not a parent code is ignored."""
    try:
        return normalize_code(raw, "parent")  # type: ignore[arg-type]  # non-str is refused
    except InvalidBagCode:
        return None


def _error(message: str) -> str:
    return encode({"type": "error", "message": message})


async def _send(connection: Connection, socket: Socket) -> None:
    send = socket.frame_sender()
    while (frame := await connection.next_frame()) is not None:
        await send(frame)
        del frame  # not kept while waiting for the next one: a wall may wait for hours
    # A scan is being saved: its ack goes out before we close (rare, so a short poll will do).
    while connection.busy:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    while (frame := await connection.next_frame()) is not None:
        await send(frame)
    closing = connection.closing or TOO_SLOW
    await socket.close(closing.code, closing.reason)


blueprint.record_once(lambda state: keep_sockets_lean(state.app))


async def _on_message(
    state: Runtime, connection: Connection, actor: Actor | None, raw: str | bytes
) -> None:
    await _handle(state, connection, actor, _parse(raw))


async def _handle(
    state: Runtime, connection: Connection, actor: Actor | None, message: Any
) -> None:
    if isinstance(message, BadInput):
        connection.offer(_error(f"{message} Messages are JSON objects with a 'type'."))
        return
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        connection.offer(_error("Messages are JSON objects with a 'type'."))
        return
    kind = message["type"]
    if kind == "ping":
        connection.offer(encode({"type": "pong"}))
    elif kind == "hello":
        connection.offer(_error("'hello' must be the first message; reconnect to resume."))
    elif kind in {"scan", "undo", "finish"}:
        if actor is None:
            connection.offer(_error("A display link is read-only."))
        elif connection.restarting:
            connection.offer(_error("The server is restarting; this was not saved. Send it again."))
        elif not await state.live.hub.still_allowed(connection, _loop_time()):
            connection.offer(_error(SIGNED_OUT))
        elif not state.quotas.take_scan(actor.user_id):
            await state.quotas.tripped("scan_rate", actor.user_id, actor.username, _origin(actor))
            connection.offer(_not_saved(message, state.quotas.too_fast))
        else:
            await _save(state, connection, actor, message)
    else:
        connection.offer(
            _error(
                f"Unknown message type {kind[:40]!r}; expected hello, scan, undo, finish or ping."
            )
        )


async def _save(
    state: Runtime, connection: Connection, actor: Actor, message: dict[str, Any]
) -> None:
    connection.busy = True
    request_id = uuid.uuid4().hex
    bind_request_id(request_id)  # log lines of this scan carry the id its audit rows record
    try:
        # Shielded: a stop must not cancel a scan halfway; the drain waits for its ack.
        ack = await asyncio.shield(
            perform(state.engine, replace(actor, request_id=request_id), message)
        )
        state.live.bus.kick()
        connection.offer(encode(ack))
        await _seen(state, connection)
        if ack.get("outcome") != "rejected" and isinstance(parent := ack.get("parent"), dict):
            state.live.hub.follow(connection, parent["code"])
    except BadMessage as error:
        connection.offer(_error(str(error)))
    except NotSaved as error:
        log.warning("scan not saved: database unavailable", extra={"error": str(error)})
        connection.offer(_not_saved(message, DATABASE_DOWN))
    except Exception:
        # A bug, not the socket's fault: this scan is not saved, the socket stays open.
        log.exception("scan failed", extra={"type": message["type"]})
        connection.offer(_not_saved(message, FAILED))
    finally:
        connection.busy = False


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


async def _seen(state: Runtime, connection: Connection) -> None:
    """Scanning is activity: an admin or biller scanning over the socket keeps the session
    (a minute at a time, like pages), while one that only watches runs out."""
    if connection.role not in accounts.INACTIVITY_ROLES or connection.session is None:
        return
    now = state.clock()
    limit = accounts.INACTIVITY_LIMIT.total_seconds()
    if connection.deadline - now.timestamp() < limit - accounts.SEEN_EVERY.total_seconds():
        auth_id = connection.session.key[1]
        try:
            await accounts.session_seen_at(state.engine, auth_id, now)
        except (SQLAlchemyError, OSError):
            # The scan was saved and acked; the session keeps its old deadline until the next.
            log.warning("session use not recorded: database unavailable")
            return
        connection.deadline = now.timestamp() + limit


def _not_saved(message: dict[str, Any], why: str) -> str:
    """The answer to a scan, undo or finish that was not saved; the scanner keeps it and
    sends it again (with the same id)."""
    return encode({"type": "error", "id": message.get("id"), "message": why})


def _session_check(state: Runtime, who: Account | None) -> SessionCheck:
    """How the session sweeper re-checks this socket's right to stay open: the person's
    session (its rights, area and deadline now), or the display link it was opened with (an
    admin may revoke either, or change the person's rights, at any time)."""
    engine = state.engine
    if who is not None:
        auth_id = current_user.auth_id

        async def person() -> Grant | None:
            now = await accounts.load_account(engine, auth_id)
            return None if now is None else Grant(now.role, now.audience, now.deadline)

        return SessionCheck(("session", auth_id), person, SESSION_CHECK_S)
    link_id = session.get("display_link")

    async def display() -> Grant | None:
        access = await display_link_access(engine, link_id)
        if access is None:
            return None
        return Grant(None, access.audience, math.inf)

    return SessionCheck(("display link", link_id), display, SESSION_CHECK_S)
