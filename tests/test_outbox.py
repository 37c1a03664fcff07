import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import text

from traitortrack.realtime.bus import RedisBus
from traitortrack.realtime.counters import LiveCounters
from traitortrack.realtime.hub import Hub
from traitortrack.realtime.outbox import (
    HOLE_EDGE,
    SETTLE_S,
    OutboxReader,
    Settling,
    current_snapshot,
    newest_id,
    replay_after,
)

INSERT = text(
    "INSERT INTO event (kind, area, payload) VALUES ('child.linked', 'jaipur', '{}') RETURNING id"
)
INSERT_WITH_SNAPSHOT = text(
    "INSERT INTO event (kind, area, payload, snapshot)"
    " VALUES ('child.linked', 'jaipur', '{}', :snapshot) RETURNING id"
)


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _reader(engine, ticks: Ticks) -> OutboxReader:
    async with engine.connect() as conn:
        return OutboxReader(await newest_id(conn), grace_s=3.0, clock=ticks)


async def test_an_event_that_commits_late_is_delivered_before_later_ids(engine):
    reader = await _reader(engine, Ticks())
    async with engine.connect() as slow, engine.connect() as fast, engine.connect() as poll:
        early = (await slow.execute(INSERT)).scalar_one()
        late = (await fast.execute(INSERT)).scalar_one()
        await fast.commit()
        assert await reader.poll(poll) == []  # id `early` is still in flight
        await slow.commit()
        assert [e.id for e in await reader.poll(poll)] == [early, late]


async def test_a_rolled_back_id_is_skipped_after_the_grace_period(engine):
    ticks = Ticks()
    reader = await _reader(engine, ticks)
    async with engine.connect() as doomed, engine.connect() as fast, engine.connect() as poll:
        await doomed.execute(INSERT)
        kept = (await fast.execute(INSERT)).scalar_one()
        await fast.commit()
        assert await reader.poll(poll) == []
        await doomed.rollback()
        ticks.now = 3.5
        assert [e.id for e in await reader.poll(poll)] == [kept]


async def test_an_id_given_up_on_that_commits_later_is_still_delivered(engine):
    ticks = Ticks()
    reader = await _reader(engine, ticks)
    async with engine.connect() as slow, engine.connect() as fast, engine.connect() as poll:
        straggler = (await slow.execute(INSERT)).scalar_one()
        kept = (await fast.execute(INSERT)).scalar_one()
        await fast.commit()
        assert await reader.poll(poll) == []
        ticks.now = 3.5
        assert [e.id for e in await reader.poll(poll)] == [kept]
        assert await reader.late(poll) == []
        await slow.commit()
        assert [e.id for e in await reader.late(poll)] == [straggler]
        assert await reader.late(poll) == []


async def test_the_reader_delivers_each_event_once(engine):
    reader = await _reader(engine, Ticks())
    async with engine.connect() as writer, engine.connect() as poll:
        ids = [(await writer.execute(INSERT)).scalar_one() for _ in range(3)]
        await writer.commit()
        assert [e.id for e in await reader.poll(poll)] == ids
        assert await reader.poll(poll) == []


async def test_a_jump_of_the_id_sequence_is_passed_with_a_bounded_watch_on_its_edges(engine):
    ticks = Ticks()
    reader = await _reader(engine, ticks)
    async with engine.connect() as slow, engine.connect() as fast, engine.connect() as poll:
        straggler = (await slow.execute(INSERT)).scalar_one()  # in flight during the jump
        await fast.execute(text("SELECT setval(pg_get_serial_sequence('event', 'id'), 5000000)"))
        after_jump = (await fast.execute(INSERT)).scalar_one()
        await fast.commit()
        assert await reader.poll(poll) == []
        ticks.now = 3.5
        assert [e.id for e in await reader.poll(poll)] == [after_jump]

        # Five million skipped ids: only the edges are watched (memory, and the query's array).
        assert len(reader._skipped) <= 2 * HOLE_EDGE
        await slow.commit()
        assert [e.id for e in await reader.late(poll)] == [straggler]
        ticks.now = 3.5 + reader.watch_s
        assert await reader.late(poll) == [] and reader._skipped == {}


async def test_a_reader_starting_above_an_id_in_flight_delivers_it_once_it_commits(engine):
    async with engine.connect() as slow, engine.connect() as fast, engine.connect() as poll:
        straggler = (await slow.execute(INSERT)).scalar_one()
        await fast.execute(INSERT)
        await fast.commit()
        position = await newest_id(poll)  # a new relay starts at the newest id
        reader = OutboxReader(position, settling=Settling(position, await current_snapshot(poll)))
        await poll.rollback()
        assert await reader.poll(poll) == [] and await reader.late(poll) == []
        await slow.commit()
        assert await reader.poll(poll) == []
        assert [e.id for e in await reader.late(poll)] == [straggler]
        assert await reader.late(poll) == []  # once


async def test_a_worker_catching_up_to_the_relay_gets_an_event_still_in_flight_below_it(engine):
    now = datetime.now(UTC)
    async with engine.connect() as conn:
        hub = Hub(LiveCounters.starting(ZoneInfo("Asia/Kolkata"), now), lambda: now)
        hub.position = await newest_id(conn)
    bus = RedisBus(engine, hub, redis_url="redis://unused")
    async with engine.connect() as slow, engine.connect() as fast:
        straggler = (await slow.execute(INSERT)).scalar_one()
        relayed = (await fast.execute(INSERT)).scalar_one()
        await fast.commit()
        # A batch after a Redis blip: the relay is past both ids (it gave up on the straggler).
        await bus._apply({"prev": relayed, "events": [], "late": []})
        assert (hub.position, hub.stats()["delivered"]) == (relayed, 1)
        await slow.commit()
        try:
            async with asyncio.timeout(3):
                while hub.stats()["delivered"] < 2:  # noqa: ASYNC110  (the bus's own task)
                    await asyncio.sleep(0.01)
        finally:
            await bus.stop()
    assert [e["id"] for e in hub._pending] == [relayed, straggler]


async def test_settling_stops_waiting_for_a_transaction_left_open_past_its_limit(engine):
    ticks = Ticks()
    async with engine.connect() as open_, engine.connect() as poll:
        await open_.execute(INSERT)  # and left open
        position = await newest_id(poll)
        settling = Settling(position, await current_snapshot(poll), clock=ticks)
        assert await settling.poll(poll) == [] and not settling.done
        ticks.now = SETTLE_S + 1
        assert await settling.poll(poll) == [] and settling.done


async def test_a_resume_gets_every_late_commit_of_many_writers_open_at_once(engine):
    async with engine.begin() as conn:
        await conn.execute(INSERT)
    writers = [await engine.connect() for _ in range(40)]
    try:
        xid = text("SELECT pg_current_xact_id()::text::bigint")
        first = min([(await writer.execute(xid)).scalar_one() for writer in writers])
        # The newest writers take the lowest ids.
        late = [(await writer.execute(INSERT)).scalar_one() for writer in reversed(writers)]
        # A snapshot's xmax is the newest *finished* xid + 1: with none finished since the first
        # writer began, PostgreSQL lists none of them (they are all at or above xmax).
        unlisted = {"snapshot": f"{first}:{first}:"}
        async with engine.begin() as fast:
            cursor = (await fast.execute(INSERT_WITH_SNAPSHOT, unlisted)).scalar_one()
        for writer in writers:
            await writer.commit()
    finally:
        for writer in writers:
            await writer.close()
    async with engine.connect() as conn:
        missed = await replay_after(conn, cursor, cursor, None, 100)
    assert missed is not None and set(late) <= {e.id for e in missed.events}
