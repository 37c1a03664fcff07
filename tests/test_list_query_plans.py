"""Every list, detail and export statement of the bag and bill pages can be served by an index,
and the keyset pages walk the index that already has their order (no sort of the whole
table), so page 10,000 costs what page 1 costs."""

from datetime import date

import pytest
from sqlalchemy import event, text

from tests.db import big_table_seq_scans, new_id, rows
from tests.warehouse import bulk_bags, stock
from traitortrack.services.activity_queries import ActivityFilter, activity_batches
from traitortrack.services.bag_queries import BagFilter, find_bag, search_bags
from traitortrack.services.bill_queries import BillFilter, find_bill, list_bills
from traitortrack.services.bills import create_bill, link_bill_parent

BAG_FILTERS = [
    BagFilter(),
    BagFilter(area="jaipur"),
    BagFilter(kind="parent"),
    BagFilter(kind="child", area="jaipur"),
    BagFilter(code="SB0"),
    BagFilter(code="SB00001", match="exact"),
    BagFilter(linked="yes"),
    BagFilter(linked="no", area="jaipur"),
    BagFilter(billed="yes"),
    BagFilter(billed="no", kind="parent"),
    BagFilter(since=date(2025, 1, 1), until=date(2030, 1, 1)),
    BagFilter(scanned_by="ravi"),
]


class Statements:
    """Every statement the engine runs while recording, with its parameters."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.seen: list[tuple[str, tuple]] = []

    def _keep(self, _conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            self.seen.append((statement, tuple(parameters or ())))

    def __enter__(self) -> "Statements":
        event.listen(self.engine.sync_engine, "before_cursor_execute", self._keep)
        return self

    def __exit__(self, *_exc) -> None:
        event.remove(self.engine.sync_engine, "before_cursor_execute", self._keep)


async def plan_of(engine, statement: str, parameters: tuple, seqscan: bool = True) -> list[str]:
    async with engine.connect() as conn:
        if not seqscan:
            await conn.exec_driver_sql("SET enable_seqscan = off")
        plan = (await conn.exec_driver_sql("EXPLAIN " + statement, parameters)).scalars().all()
        await conn.rollback()
    return list(plan)


@pytest.fixture
async def stocked(engine, dispatcher, biller):
    await stock(engine, dispatcher, {"SB00001": ["CH001", "CH002"], "SB00002": []})
    await create_bill(engine, biller, new_id(), "INV-1", 2)
    await link_bill_parent(engine, biller, new_id(), "INV-1", "SB00001")
    bill_id = (await rows(engine, "SELECT id FROM bill"))[0].id
    return bill_id


async def test_no_list_or_export_statement_needs_a_sequential_scan(engine, stocked):
    with Statements(engine) as recorded:
        for where in BAG_FILTERS:
            first = await search_bags(engine, where, None, size=1)
            if first.next:
                await search_bags(engine, where, first.next, size=1)
        await find_bag(engine, "SB00001", None)
        for where in (BillFilter(), BillFilter(status="processing"), BillFilter(number="inv")):
            first = await list_bills(engine, where, None, size=1)
            await list_bills(engine, where, first.next or "x", size=1)
        await find_bill(engine, stocked)
        async for _ in activity_batches(engine, ActivityFilter(), date.today()):
            pass
        async for _ in activity_batches(engine, ActivityFilter(username="nobody"), date.today()):
            pass
    assert len(recorded.seen) > 30
    offenders = []
    for statement, parameters in recorded.seen:
        for line in big_table_seq_scans(await plan_of(engine, statement, parameters, False)):
            offenders.append((statement, line))
    assert offenders == []


@pytest.fixture
async def crowded(engine):
    """Enough bags in two areas that the planner's choices are the real ones."""
    await bulk_bags(engine, [f"C{n:06d}" for n in range(20_000)], "child", "jaipur")
    await bulk_bags(engine, [f"SB{n:05d}" for n in range(1, 5_001)], "parent", "indore")
    async with engine.connect() as conn:
        # Scanned over a few days, the areas interleaved, as a real warehouse's bags are.
        await conn.execute(
            text(
                "UPDATE bag SET created_at = now() - id * interval '13 seconds', "
                "area = CASE WHEN id % 20 = 0 THEN 'indore' ELSE 'jaipur' END"
            )
        )
        await conn.execute(text("ANALYZE bag"))
        await conn.commit()


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (BagFilter(), "ix_bag_created_id"),
        (BagFilter(area="indore"), "ix_bag_area_created_id"),
        (BagFilter(code="SB01"), "uq_bag_code"),
    ],
)
async def test_deep_bag_pages_walk_the_index_in_page_order(engine, crowded, where, index):
    page = await search_bags(engine, where, None, size=50)
    for _ in range(3):  # a few pages in
        page = await search_bags(engine, where, page.next, size=50)
    with Statements(engine) as recorded:
        await search_bags(engine, where, page.next, size=50)
    statement, parameters = recorded.seen[0]
    plan = "\n".join(await plan_of(engine, statement, parameters))
    assert f"Index Scan Backward using {index}" in plan or f"Index Scan using {index}" in plan
    assert "Sort" not in plan.split("->")[1], plan  # the limit reads rows already in order


async def test_the_bill_number_search_index_is_in_byte_order(engine):
    indexdef = (
        await rows(
            engine, "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_bill_number_search'"
        )
    )[0].indexdef
    assert 'COLLATE "C"' in indexdef


@pytest.mark.parametrize(
    ("where", "index"),
    [(BillFilter(), "ix_bill_created_id"), (BillFilter(number="inv-01"), "ix_bill_number_search")],
)
async def test_bill_pages_walk_the_index_in_page_order(engine, where, index):
    async with engine.connect() as conn:
        await conn.execute(
            text(
                "INSERT INTO bill (number, capacity, created_at) "
                "SELECT 'INV-' || lpad(n::text, 5, '0'), 10, now() - n * interval '1 minute' "
                "FROM generate_series(1, 20000) AS n"
            )
        )
        await conn.execute(text("ANALYZE bill"))
        await conn.commit()
    first = await list_bills(engine, where, None, size=20)
    with Statements(engine) as recorded:
        second = await list_bills(engine, where, first.next, size=20)
    assert not {r.number for r in first.rows} & {r.number for r in second.rows}
    statement, parameters = recorded.seen[0]
    plan = "\n".join(await plan_of(engine, statement, parameters))
    assert f"using {index} on bill" in plan, plan
    assert "Sort" not in plan.split("->")[1], plan
