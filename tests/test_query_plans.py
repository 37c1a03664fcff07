"""Every statement the scan and bill paths, the outbox readers and the outbox's retention run can
be served by an index (no sequential scan of a big table or a partition of one), so latency stays
flat as the warehouse fills up."""

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import event, text

from tests.db import big_table_seq_scans
from traitortrack.db.retention import maintain, reserve_ids
from traitortrack.realtime.counters import LiveCounters
from traitortrack.realtime.outbox import (
    OutboxReader,
    Settling,
    current_snapshot,
    events_between,
    newest_id,
    oldest_id,
    replay_after,
)
from traitortrack.services import bags, bills, scans
from traitortrack.services.stats import wall_figures


async def _run_every_use_case(engine, dispatcher, admin, biller) -> None:
    def cid() -> str:
        return str(uuid.uuid4())

    await scans.scan_parent(engine, dispatcher, cid(), "SB00001")
    await scans.link_child(engine, dispatcher, cid(), "SB00001", "CHILD1")
    await scans.link_child(engine, dispatcher, cid(), "SB00001", "CHILD1")
    await scans.link_child(engine, dispatcher, cid(), "SB00001", "CHILD2")
    await scans.undo_last_child(engine, dispatcher, cid(), "SB00001")
    await scans.finish_parent(engine, dispatcher, cid(), "SB00001")
    await bills.create_bill(engine, biller, cid(), "B-1", 2)
    await bills.edit_bill(engine, biller, cid(), "B-1", capacity=1, description="d")
    await bills.link_bill_parent(engine, biller, cid(), "B-1", "SB00001")
    await bills.complete_bill(engine, biller, cid(), "B-1")
    await bills.reopen_bill(engine, biller, cid(), "B-1")
    await bills.remove_bill_parent(engine, biller, cid(), "B-1", "SB00001")
    await bills.delete_bill(engine, admin, cid(), "B-1")
    await bags.delete_bag(engine, admin, cid(), "CHILD2")
    replay = cid()
    for _ in range(2):
        await scans.scan_parent(engine, dispatcher, replay, "SB00002")


@contextlib.contextmanager
def captured(engine) -> Iterator[list[tuple[str, tuple]]]:
    """Every data statement the engine runs meanwhile, through SQLAlchemy or asyncpg directly."""
    statements: list[tuple[str, tuple]] = []

    def keep(statement: str, parameters: object) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")):
            statements.append((statement, tuple(parameters or ())))

    def through_sqlalchemy(_conn, _cursor, statement, parameters, _context, _many) -> None:
        keep(statement, parameters)

    def through_asyncpg(query) -> None:  # the scan path's direct statements
        args = query.args
        if args and all(isinstance(row, tuple) for row in args):  # executemany: one row will do
            args = args[0]
        keep(query.query, args)

    def on_checkout(dbapi_connection, _record, _proxy) -> None:
        dbapi_connection.driver_connection.add_query_logger(through_asyncpg)

    def on_checkin(dbapi_connection, _record) -> None:
        dbapi_connection.driver_connection.remove_query_logger(through_asyncpg)

    hooks = [
        ("before_cursor_execute", through_sqlalchemy),
        ("checkout", on_checkout),
        ("checkin", on_checkin),
    ]
    for name, hook in hooks:
        event.listen(engine.sync_engine, name, hook)
    try:
        yield statements
    finally:
        for name, hook in hooks:
            event.remove(engine.sync_engine, name, hook)


async def sequential_scans(
    engine, run: Callable[[], Awaitable[None]]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Run ``run``: the statements it ran, and those that need a sequential scan (with the line
    of the plan that says so)."""
    with captured(engine) as statements:
        await run()
    offenders = []
    async with engine.connect() as conn:
        # Tiny test tables would be scanned sequentially anyway; forbidding it shows whether an
        # index could serve the statement at all.
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            plan = (await conn.exec_driver_sql("EXPLAIN " + statement, parameters)).scalars().all()
            offenders += [(statement, line) for line in big_table_seq_scans(list(plan))]
        await conn.rollback()
    return [statement for statement, _ in statements], offenders


async def test_no_scan_or_bill_statement_needs_a_sequential_scan(engine, dispatcher, admin, biller):
    statements, offenders = await sequential_scans(
        engine, lambda: _run_every_use_case(engine, dispatcher, admin, biller)
    )
    assert len(statements) > 30
    assert any("FOR UPDATE" in statement for statement in statements)  # the scan path is in
    assert offenders == []


async def _read_the_outbox_and_keep_it(engine, dispatcher) -> None:
    await reserve_ids(engine, 0)
    async with engine.connect() as conn, engine.connect() as in_flight:
        position = await newest_id(conn)
        await oldest_id(conn)
        await events_between(conn, 0, position, None, 100)
        await events_between(conn, 0, position, ["jaipur"], 100)
        await replay_after(conn, position - 1, position, ["jaipur"], 100)
        await Settling(position, await current_snapshot(conn)).poll(conn)
        reader = OutboxReader(position, grace_s=0.0)
        await in_flight.execute(
            text("INSERT INTO event (kind, payload) VALUES ('bill.created', '{}')")
        )
        await scans.scan_parent(engine, dispatcher, str(uuid.uuid4()), "SB00009")
        for _ in range(2):  # the first sees a hole, the second gives up on it and watches it
            await reader.poll(conn)
        await reader.late(conn)
        await in_flight.rollback()
        now = datetime.now(UTC)
        await LiveCounters.starting(ZoneInfo("Asia/Kolkata"), now).recount(conn, now)
        await conn.rollback()
    await wall_figures(engine, position, frozenset({"jaipur"}))
    await maintain(engine, timedelta(days=30), datetime.now(UTC))


async def test_no_outbox_read_or_retention_statement_needs_a_sequential_scan(engine, dispatcher):
    for i in range(3):
        await scans.scan_parent(engine, dispatcher, str(uuid.uuid4()), f"SB0000{i}")
    async with engine.begin() as conn:  # the writes so far in a partition the next ids are past
        await conn.execute(
            text("SELECT setval(pg_get_serial_sequence('event', 'id'), :id)"), {"id": 5_000_000}
        )
    # The first round drops the migration's empty first partition: the next reads the newest
    # event of the partition after it (and keeps it), the statement this test is after.
    await maintain(engine, timedelta(days=30), datetime.now(UTC))
    statements, offenders = await sequential_scans(
        engine, lambda: _read_the_outbox_and_keep_it(engine, dispatcher)
    )
    assert any("max(at)" in statement for statement in statements)
    assert any("id = ANY" in statement for statement in statements)  # the late-commit watch
    assert offenders == []
