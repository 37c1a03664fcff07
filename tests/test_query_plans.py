"""Every statement the scan and bill paths run can be served by an index (no sequential scan
of a big table), so latency stays flat as the warehouse fills up."""

import uuid

from sqlalchemy import event

from traitortrack.services import bags, bills, scans

BIG_TABLES = ("bag", "link", "scan", "event", "bill_parent", "bill", "audit")


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


async def test_no_scan_or_bill_statement_needs_a_sequential_scan(engine, dispatcher, admin, biller):
    captured: list[tuple[str, object]] = []

    def keep(statement: str, parameters: object) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")):
            captured.append((statement, tuple(parameters or ())))

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
        await _run_every_use_case(engine, dispatcher, admin, biller)
    finally:
        for name, hook in hooks:
            event.remove(engine.sync_engine, name, hook)
    assert len(captured) > 30
    assert any("FOR UPDATE" in statement for statement, _ in captured)  # the scan path is in

    offenders = []
    async with engine.connect() as conn:
        # Tiny test tables would be scanned sequentially anyway; forbidding it shows whether an
        # index could serve the statement at all.
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in captured:
            plan = (await conn.exec_driver_sql("EXPLAIN " + statement, parameters)).scalars().all()
            for line in plan:
                if "Seq Scan" in line and any(f" on {t} " in line + " " for t in BIG_TABLES):
                    offenders.append((statement, line))
        await conn.rollback()
    assert offenders == []
