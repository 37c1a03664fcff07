"""The events outbox keeps what is younger than the retention period, a partition at a time, and
reads across partition boundaries as if it were one table."""

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.db import rows, value
from tests.test_ws import _dispatcher_client, _receive_until
from traitortrack.db.retention import (
    AHEAD,
    PARTITION_IDS,
    RETENTION_LOCK_KEY,
    EventRetention,
    last_id,
    maintain,
    partitions,
    reserve_ids,
)
from traitortrack.realtime.outbox import OutboxReader, events_between, oldest_id

RETENTION = timedelta(days=30)
NOW = datetime.now(UTC)
SECOND = PARTITION_IDS + 1  # the first id of the second partition the migration made


async def _add_events(engine, first_id: int, ages_in_days: list[float]) -> list[int]:
    """Events through the sequence from ``first_id`` on, written that many days ago."""
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT setval(pg_get_serial_sequence('event', 'id'), :id, false)"),
            {"id": first_id},
        )
        ids = []
        for age in ages_in_days:
            ids.append(
                (
                    await conn.execute(
                        text(
                            "INSERT INTO event (kind, area, payload, at)"
                            " VALUES ('child.linked', 'jaipur', '{}', :at) RETURNING id"
                        ),
                        {"at": NOW - timedelta(days=age)},
                    )
                ).scalar_one()
            )
    return ids


async def _event_ids(engine) -> list[int]:
    return [row.id for row in await rows(engine, "SELECT id FROM event ORDER BY id")]


async def test_retention_drops_only_partitions_wholly_older_than_the_cut(engine):
    await reserve_ids(engine, PARTITION_IDS)  # a third partition
    await _add_events(engine, 1, [60, 40])
    mixed = await _add_events(engine, SECOND, [45, 29.9])  # the second is inside the period
    current = await _add_events(engine, SECOND + PARTITION_IDS, [40])

    done = await maintain(engine, RETENTION, NOW)

    assert [p.lower for p in done.dropped] == [0, 1]  # the migration's empty first one, and old
    assert await _event_ids(engine) == mixed + current


async def test_the_partition_being_written_is_never_dropped_however_old_its_events(engine):
    await _add_events(engine, 1, [90, 80])

    done = await maintain(engine, RETENTION, NOW)

    assert [p.lower for p in done.dropped] == [0]
    assert len(await _event_ids(engine)) == 2


async def test_partitions_are_made_ahead_of_the_ids_handed_out(engine):
    async with engine.begin() as conn:  # ids handed out up to the last partition made
        await conn.execute(
            text("SELECT setval(pg_get_serial_sequence('event', 'id'), :id)"),
            {"id": 2 * PARTITION_IDS},
        )

    done = await maintain(engine, RETENTION, NOW)

    async with engine.connect() as conn:
        top = (await partitions(conn))[-1].upper
        handed_out = await last_id(conn)
    assert done.created
    assert top >= handed_out + AHEAD * PARTITION_IDS


async def test_a_second_worker_skips_the_round_while_one_maintains(engine):
    await _add_events(engine, 1, [60])
    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": RETENTION_LOCK_KEY})
        done = await maintain(engine, RETENTION, NOW)
        await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RETENTION_LOCK_KEY})
    assert done.skipped and not done.dropped
    assert await value(engine, "SELECT count(*) FROM event") == 1


async def test_replay_and_the_outbox_reader_cross_a_partition_boundary(engine):
    ids = await _add_events(engine, SECOND - 3, [0] * 6)
    assert ids[2] < SECOND <= ids[3]
    async with engine.connect() as conn:
        replayed = await events_between(conn, ids[0] - 1, ids[-1], ["jaipur"], 100)
        reader = OutboxReader(ids[0] - 1)
        polled = await reader.poll(conn)
    assert [e.id for e in replayed] == ids
    assert [e.id for e in polled] == ids


@pytest.fixture
async def expired_outbox(engine) -> int:
    """Events of two months ago dropped by retention, and a recent one kept: its id."""
    await _add_events(engine, 1, [60, 60, 60])
    [kept] = await _add_events(engine, SECOND, [0])
    await maintain(engine, RETENTION, NOW)
    async with engine.connect() as conn:
        assert await oldest_id(conn) == kept
    return kept


async def test_a_client_resuming_from_a_dropped_event_is_told_to_resync(
    expired_outbox, app, engine
):
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "last_event_id": 2}))
        assert (await _receive_until(ws, "resync"))["reason"]
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "last_event_id": expired_outbox - 1}))
        await _receive_until(ws, "welcome")
        with pytest.raises(TimeoutError):
            await _receive_until(ws, "resync", seconds=0.5)


class Heard(logging.Handler):
    """The records of one message, and an event set at the first."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message, self.records, self.first = message, [], asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.records.append(record)
            self.first.set()


async def test_the_workers_job_drops_expired_partitions_and_says_so(engine):
    await _add_events(engine, 1, [60])
    await _add_events(engine, SECOND, [0])
    heard, log = (
        Heard("event partitions maintained"),
        logging.getLogger("traitortrack.db.retention"),
    )
    log.addHandler(heard)
    log.setLevel(logging.INFO)
    job = EventRetention.start(engine, RETENTION, lambda: NOW)
    try:
        async with asyncio.timeout(10):
            await heard.first.wait()
    finally:
        await job.stop()
        log.removeHandler(heard)
        log.setLevel(logging.NOTSET)
    [record] = heard.records
    assert record.partitions_dropped == ["from_0", "from_1"]
    assert await _event_ids(engine) == [SECOND]
