import asyncio
import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from traitortrack.domain.events import Event
from traitortrack.realtime.counters import LiveCounters
from traitortrack.realtime.hub import (
    QUEUE_FRAMES,
    RESTART,
    SESSION_ENDED,
    TOO_SLOW,
    Connection,
    Grant,
    Hub,
    SessionCheck,
)

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def _hub() -> Hub:
    return Hub(LiveCounters.starting(ZoneInfo("Asia/Kolkata"), NOW), lambda: NOW)


def _wall(session: SessionCheck | None = None) -> Connection:
    connection = Connection(None, None, coalesced=True, session=session)
    connection.go_live()
    return connection


class Lookups:
    """A session check that answers with what a display link of every area grants (or that
    the session has ended), counting how often it is asked."""

    def __init__(self, allowed: bool) -> None:
        self.allowed, self.count = allowed, 0

    async def __call__(self) -> Grant | None:
        self.count += 1
        return Grant(None, None, math.inf) if self.allowed else None


async def test_walls_on_one_display_link_share_one_session_check():
    hub, link = _hub(), Lookups(allowed=True)
    walls = [_wall(SessionCheck(("display link", 7), link, 30.0)) for _ in range(1000)]
    for wall in walls:
        hub.register(wall)
    await hub.check_sessions(now=1.0)
    assert link.count == 1
    assert all(w.check_at == 31.0 and w.closing is None for w in walls)
    await hub.check_sessions(now=2.0)  # none is due again before its interval
    assert link.count == 1


async def test_a_revoked_session_ends_only_its_own_sockets():
    hub, revoked, kept = _hub(), Lookups(allowed=False), Lookups(allowed=True)
    gone = [_wall(SessionCheck(("session", "1.1"), revoked, 30.0)) for _ in range(2)]
    stays = _wall(SessionCheck(("session", "2.1"), kept, 30.0))
    for connection in [*gone, stays]:
        hub.register(connection)
    await hub.check_sessions(now=0.0)
    assert [c.closing for c in gone] == [SESSION_ENDED, SESSION_ENDED]
    assert stays.closing is None
    await hub.check_sessions(now=60.0)  # an ended socket is not looked up again
    assert revoked.count == 1


async def test_the_sender_gets_queued_frames_then_the_end_of_a_closing_socket():
    wall = _wall()
    waiting = asyncio.create_task(wall.next_frame())
    await asyncio.sleep(0)
    assert wall.offer("one")
    assert await waiting == "one"
    wall.offer("two")
    wall.restart()
    wall.end(SESSION_ENDED)  # the first reason to close wins
    assert [await wall.next_frame(), await wall.next_frame()] == ["two", None]
    assert wall.closing == RESTART and wall.restarting


async def test_an_overflowing_socket_is_sent_only_a_resync_then_closed_as_too_slow():
    wall = _wall()
    for n in range(QUEUE_FRAMES):
        assert wall.offer(str(n))
    assert not wall.offer("one too many")
    assert not wall.offer("after")
    assert '"type":"resync"' in (await wall.next_frame() or "")
    assert await wall.next_frame() is None
    assert wall.closing == TOO_SLOW


def test_one_timer_pings_every_open_socket_that_can_be_pinged():
    hub, pinged = _hub(), []
    walls = [_wall() for _ in range(3)]
    for n, wall in enumerate(walls[:2]):
        wall.ping = lambda n=n: pinged.append(n)
        hub.register(wall)
    hub.register(walls[2])  # no ping (not on Hypercorn's HTTP/1.1 stream)
    walls[1].restart()  # closing: nothing more is written to it but what is queued
    hub.ping_all()
    assert pinged == [0]


def test_a_late_event_found_by_the_relay_and_by_the_workers_own_start_is_delivered_once():
    hub, page = _hub(), Connection(None, None, coalesced=False)
    page.go_live()
    hub.register(page)
    late = Event(7, "bill.created", NOW.isoformat(), None, {})
    hub.deliver([], [late])
    hub.deliver([], [late])
    assert len(page.frames) == 1 and hub.stats()["delivered"] == 1
