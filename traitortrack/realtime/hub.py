"""The hub: who is connected to this worker, and getting each event to the right ones.

Each connection has a bounded queue of ready-to-send frames (the socket's task waits on it and
sends them). Frames are serialised once per audience and the same bytes go to every member.
Wall displays and metrics screens get events and counters coalesced (at most ``COALESCE_HZ``
frames a second); a scanner gets, at once, only the events about the parent it is working on
(a thousand scanners would otherwise each be sent every scan of their area); other pages get
their audience's events at once. A connection whose queue overflows is told to resync and
dropped from fan-out: a slow client never slows the others, nor grows the server's memory.
"""

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from traitortrack.domain.events import Event, EventKind
from traitortrack.domain.roles import Role, visible_to
from traitortrack.realtime.counters import LiveCounters

log = logging.getLogger(__name__)

QUEUE_FRAMES = 256
# Late events remembered, so one found twice (by the relay and by this worker's own start) is
# delivered once.
LATE_REMEMBERED = 10_000
COALESCE_HZ = 10
COUNTERS_HZ = 2
Audience = frozenset[str] | None  # areas a connection may see; None: all of them


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), default=str)


class State(StrEnum):
    PAUSED = "paused"  # registered, holding live frames while its replay is sent
    LIVE = "live"
    CLOSED = "closed"


class Closing(NamedTuple):
    code: int
    reason: str


TOO_SLOW = Closing(1008, "too slow; reconnect and resume")
RESTART = Closing(1012, "server restarting; reconnect")
SESSION_ENDED = Closing(4401, "session ended; sign in again")
ACCESS_CHANGED = Closing(4409, "access changed; reconnect")


class Grant(NamedTuple):
    """What a session (or display link) allows now: a socket opened with other rights than
    these is closed, and its client reconnects with the new ones."""

    role: Role | None
    audience: Audience
    deadline: float  # epoch seconds; a socket of a session that ran out is closed


@dataclass(frozen=True, slots=True)
class SessionCheck:
    """How the session sweeper re-checks a socket's right to stay open. Sockets with the same
    ``key`` (a wall's display link, a person's session) share one check; ``grant`` is None
    once the session or link has ended."""

    key: Hashable
    grant: Callable[[], Awaitable[Grant | None]]
    every_s: float


@dataclass(eq=False, slots=True)
class Connection:
    """One socket's place in the hub. Slotted and without asyncio queues or events of its own:
    a worker holds thousands of idle wall displays, and each byte here is paid per socket."""

    role: Role | None  # None for a display link
    audience: Audience
    coalesced: bool  # wall displays and metrics screens
    metrics: bool = False
    follows_parent: bool = False  # a scanner: only events about its current parent
    parent: str | None = None  # that parent (the one its last saved scan was about)
    username: str = ""
    user_id: int | None = None  # None for a display link
    session: SessionCheck | None = None
    check_at: float = 0.0  # when the sweeper next checks the session (the loop's clock)
    deadline: float = math.inf  # when the session runs out, as of its last check (epoch s)
    # At most QUEUE_FRAMES, and mostly one or two: a list is a tenth of a deque's size.
    frames: list[str] = field(default_factory=list)
    state: State = State.PAUSED
    held: list[str] = field(default_factory=list)
    closing: Closing | None = None  # once set, the sender sends what is queued, then closes
    busy: bool = False  # a scan from this socket is being saved
    # Coalesced events gathered before it registered: its welcome position covers them.
    skip_pending: int = 0
    # Writes a websocket ping frame (proxies cut idle sockets); None where the server pings.
    ping: Callable[[], None] | None = None
    _wake: asyncio.Future[None] | None = None  # the sender waiting for a frame

    @property
    def restarting(self) -> bool:
        return self.closing == RESTART

    def sees(self, event: Event) -> bool:
        return visible_to(event.area, self.audience)

    def offer(self, frame: str) -> bool:
        """Queue a frame; False (and the connection is closed) when it cannot keep up."""
        if self.state == State.CLOSED:
            return False
        if self.state == State.PAUSED:
            if len(self.held) >= QUEUE_FRAMES:
                return self._overflow()
            self.held.append(frame)
            return True
        if len(self.frames) >= QUEUE_FRAMES:
            return self._overflow()
        self.frames.append(frame)
        self._wake_sender()
        return True

    async def next_frame(self) -> str | None:
        """The next frame to send; None once the socket is closing and nothing is queued."""
        while not self.frames:
            if self.closing is not None:
                return None
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        return self.frames.pop(0)

    def go_live(self, first: Iterable[str] = ()) -> None:
        """Send ``first`` (welcome, replay), then the live frames held meanwhile: those have
        later ids, so they must not overtake the replay."""
        if self.state == State.CLOSED:  # overflowed while paused: only the resync goes out
            return
        held, self.held = [*first, *self.held], []
        self.state = State.LIVE
        for frame in held:
            if not self.offer(frame):
                return

    def _overflow(self) -> bool:
        log.warning("client too slow; dropped", extra={"user": self.username})
        self.state = State.CLOSED
        self.frames.clear()
        self.held.clear()
        self.frames.append(encode({"type": "resync", "reason": "too slow: reload"}))
        self.end(TOO_SLOW)
        return False

    def end(self, closing: Closing) -> None:
        """Close the socket with ``closing`` once what is queued has been sent."""
        if self.closing is None:
            self.closing = closing
        self._wake_sender()

    def restart(self) -> None:
        """The server is stopping: finish what is queued, then close with 1012."""
        self.end(RESTART)

    def close(self) -> None:
        self.state = State.CLOSED
        self.end(TOO_SLOW)

    def _wake_sender(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


@dataclass
class Hub:
    counters: LiveCounters
    clock: Callable[[], datetime]
    position: int = 0  # the last event id delivered to this worker's connections
    connections: set[Connection] = field(default_factory=set)
    draining: bool = False  # the worker is stopping: every socket is told to reconnect
    _per_user: Counter[int] = field(default_factory=Counter)  # open sockets per account
    _immediate: set[Connection] = field(default_factory=set)  # every event of their audience
    _coalesced: set[Connection] = field(default_factory=set)
    _followers: dict[str, set[Connection]] = field(default_factory=dict)  # parent -> scanners
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _counters_changed: set[str] = field(default_factory=set)
    _counters_sent_at: float = 0.0
    _delivered: int = 0
    _lag_ms: list[float] = field(default_factory=list)
    _late: dict[int, None] = field(default_factory=dict)  # ids delivered late, oldest first

    def register(self, connection: Connection) -> tuple[int, dict[str, Any]]:
        """Add a paused connection; returns the position and counters it starts from."""
        if self.draining:
            connection.restart()
        self.connections.add(connection)
        if connection.user_id is not None:
            self._per_user[connection.user_id] += 1
        if connection.coalesced:
            self._coalesced.add(connection)
        elif not connection.follows_parent:
            self._immediate.add(connection)
        connection.skip_pending = len(self._pending)
        return self.position, self.counters.snapshot(connection.audience)

    def unregister(self, connection: Connection) -> None:
        connection.close()
        self._drop(connection)

    def drain(self) -> None:
        """The worker is stopping: close every socket with 1012 (each once its in-flight scan
        is acked), and from now on every socket that registers too (its handshake was under
        way when the drain began)."""
        self.draining = True
        for connection in self.connections:
            connection.restart()

    def follow(self, connection: Connection, parent: str) -> None:
        """A scanner now works on ``parent``: send it what others do to that parent."""
        if not connection.follows_parent or connection.parent == parent:
            return
        self._unfollow(connection)
        connection.parent = parent
        if connection.state != State.CLOSED:
            self._followers.setdefault(parent, set()).add(connection)

    def _unfollow(self, connection: Connection) -> None:
        if connection.parent is None:
            return
        followers = self._followers.get(connection.parent)
        if followers is not None:
            followers.discard(connection)
            if not followers:
                del self._followers[connection.parent]

    def sockets_of(self, user_id: int) -> int:
        """How many sockets this account has open on this worker."""
        return self._per_user.get(user_id, 0)

    def _drop(self, connection: Connection) -> None:
        if connection in self.connections and connection.user_id is not None:
            self._per_user[connection.user_id] -= 1
            if not self._per_user[connection.user_id]:
                del self._per_user[connection.user_id]
        self.connections.discard(connection)
        self._immediate.discard(connection)
        self._coalesced.discard(connection)
        self._unfollow(connection)

    def deliver(self, events: Iterable[Event], late: Iterable[Event] = ()) -> None:
        """Fan out events that follow ``position`` in order (the outbox reader's output), and
        ``late`` ones below it, which committed after it passed them (each once)."""
        batch = [e for e in events if e.id > self.position]
        if batch:
            self.position = batch[-1].id
        batch = sorted([*self._first_time(late), *batch], key=lambda e: e.id)
        if not batch:
            return
        now = self.clock()
        for event in batch:
            if event.kind == EventKind.USER_CHANGED:
                self._recheck_user(event.data.get("user_id"))
            if (area := self.counters.apply(event, now)) is not None:
                self._counters_changed.add(area)
            self._lag_ms.append((time.time() - datetime.fromisoformat(event.at).timestamp()) * 1000)
        del self._lag_ms[:-1000]
        self._delivered += len(batch)
        frames: dict[Audience, str] = {}
        for connection in list(self._immediate):
            key = connection.audience
            if key not in frames:
                visible = [e.to_json() for e in batch if connection.sees(e)]
                frames[key] = encode({"type": "events", "events": visible}) if visible else ""
            if frames[key] and not connection.offer(frames[key]):
                self._drop(connection)
        self._to_followers(batch)
        self._pending.extend(e.to_json() for e in batch)

    def _first_time(self, late: Iterable[Event]) -> list[Event]:
        fresh = [e for e in late if e.id not in self._late]
        self._late.update(dict.fromkeys(e.id for e in fresh))
        while len(self._late) > LATE_REMEMBERED:
            del self._late[next(iter(self._late))]
        return fresh

    def _to_followers(self, batch: list[Event]) -> None:
        """Scanners get what other people did to their parent (their own scans come as acks)."""
        about: dict[str, list[Event]] = {}
        for event in batch:
            parent = event.data.get("parent")
            if isinstance(parent, dict) and parent.get("code") in self._followers:
                about.setdefault(parent["code"], []).append(event)
        for code, events in about.items():
            frames: dict[str, str] = {}
            for connection in list(self._followers.get(code, ())):
                who = connection.username
                if who not in frames:
                    others = [e.to_json() for e in events if e.data.get("by") != who]
                    frames[who] = encode({"type": "events", "events": others}) if others else ""
                if frames[who] and connection.sees(events[0]) and not connection.offer(frames[who]):
                    self._drop(connection)

    def flush_coalesced(self) -> None:
        """Send walls and metrics screens what gathered since the last flush (one frame each)."""
        pending, self._pending = self._pending, []
        changed: set[str] = set()
        now = time.monotonic()
        # Counters change with every scan; a snapshot twice a second is plenty on a wall and
        # halves the sends that 1,000 walls cost a worker.
        if self._counters_changed and now - self._counters_sent_at >= 1 / COUNTERS_HZ:
            changed, self._counters_changed = self._counters_changed, set()
            self._counters_sent_at = now
        events_frames: dict[tuple[Audience, int], str] = {}
        counter_frames: dict[Audience, str] = {}
        for connection in list(self._coalesced):
            key = connection.audience
            skip, connection.skip_pending = connection.skip_pending, 0
            frames = []
            if len(pending) > skip:
                if (key, skip) not in events_frames:
                    visible = [e for e in pending[skip:] if visible_to(e["area"], key)]
                    events_frames[key, skip] = (
                        encode({"type": "events", "events": visible}) if visible else ""
                    )
                frames.append(events_frames[key, skip])
            if changed and (key is None or changed & key or "-" in changed):
                if key not in counter_frames:
                    counter_frames[key] = encode(
                        {"type": "counters", **self.counters.snapshot(key)}
                    )
                frames.append(counter_frames[key])
            for frame in frames:
                if frame and not connection.offer(frame):
                    self._drop(connection)
                    break

    def broadcast_metrics(self, metrics: dict[str, Any]) -> None:
        frame = encode({"type": "metrics", **metrics})
        for connection in list(self._coalesced):
            if connection.metrics and not connection.offer(frame):
                self._drop(connection)

    def _recheck_user(self, user_id: object) -> None:
        """An account changed (rights, area, sessions): its sockets are checked at the next
        sweep, and before any scan they send meanwhile."""
        for connection in self.connections:
            if connection.user_id is not None and connection.user_id == user_id:
                connection.check_at = 0.0

    async def check_sessions(self, now: float) -> None:
        """End the sockets whose session is due for a check and no longer allows them."""
        due: dict[Hashable, list[Connection]] = {}
        for connection in self.connections:
            due_now = connection.check_at <= now and connection.closing is None
            if connection.session is not None and due_now:
                due.setdefault(connection.session.key, []).append(connection)
        for sharing in due.values():
            session = sharing[0].session
            assert session is not None
            grant = await session.grant()
            for connection in sharing:
                self._apply(connection, grant, now)

    async def still_allowed(self, connection: Connection, now: float) -> bool:
        """Whether ``connection`` may still act (a scan is about to be saved): checked now when
        its check is due or its session may have run out, else as of the last check."""
        session = connection.session
        if connection.closing is not None:
            return False
        if session is not None and (
            connection.check_at <= now or self.clock().timestamp() > connection.deadline
        ):
            self._apply(connection, await session.grant(), now)
        return connection.closing is None

    def _apply(self, connection: Connection, grant: Grant | None, now: float) -> None:
        assert connection.session is not None
        if grant is None or self.clock().timestamp() > grant.deadline:
            connection.end(SESSION_ENDED)
        elif grant.role != connection.role or grant.audience != connection.audience:
            connection.end(ACCESS_CHANGED)
        else:
            connection.deadline = grant.deadline
            connection.check_at = now + connection.session.every_s

    def ping_all(self) -> None:
        """Ping every socket: one timer for the worker, not a task per socket."""
        for connection in self.connections:
            if connection.ping is not None and connection.closing is None:
                connection.ping()

    def close_all(self) -> None:
        for connection in list(self.connections):
            self.unregister(connection)

    def stats(self) -> dict[str, Any]:
        by_role = Counter(str(c.role or "display") for c in self.connections)
        lags = sorted(self._lag_ms)
        return {
            "clients": dict(by_role),
            "position": self.position,
            "delivered": self._delivered,
            "fanout_lag_ms_p99": lags[int(len(lags) * 0.99)] if lags else None,
        }

    def recent_lags_ms(self, count: int) -> list[float]:
        """Fan-out lags of the last ``count`` events delivered (of the last 1,000 at most)."""
        return self._lag_ms[-count:] if count > 0 else []
