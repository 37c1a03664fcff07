"""SPEC §7 bag search: every filter, keyset pages that are disjoint, ordered and complete, and
dispatchers kept to their own dispatch area."""

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.conftest import make_actor
from tests.db import new_id
from tests.warehouse import bulk_bags, stock
from traitortrack.domain.roles import Role
from traitortrack.services.bag_queries import BagFilter, bag_batches, find_bag, search_bags
from traitortrack.services.bills import create_bill, link_bill_parent
from traitortrack.services.scans import undo_last_child


async def all_pages(engine, where: BagFilter, size: int) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = await search_bags(engine, where, after, size)
        pages.append([row.code for row in page.rows])
        if page.next is None:
            return pages
        after = page.next


async def test_newest_first_pages_are_disjoint_ordered_and_complete_even_with_equal_times(engine):
    same_moment = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    await bulk_bags(engine, [f"C{n:05d}" for n in range(60)], "child", "jaipur", same_moment)
    await bulk_bags(engine, [f"D{n:05d}" for n in range(47)], "child", "indore")
    pages = await all_pages(engine, BagFilter(), size=20)
    codes = [code for page in pages for code in page]
    assert [len(page) for page in pages] == [20, 20, 20, 20, 20, 7]
    assert len(set(codes)) == len(codes) == 107
    # Newest first: the later (now) bags, then the 60 sharing one timestamp, by id descending.
    assert codes[:47] == [f"D{n:05d}" for n in reversed(range(47))]
    assert codes[47:] == [f"C{n:05d}" for n in reversed(range(60))]


async def test_prefix_search_pages_in_code_order(engine):
    await bulk_bags(engine, [f"SB{n:05d}" for n in range(1, 31)], "parent", "jaipur")
    await bulk_bags(engine, ["SC00001", "SA00001", "S0000X1"], "child", "jaipur")
    pages = await all_pages(engine, BagFilter(code="SB000"), size=7)
    codes = [code for page in pages for code in page]
    assert codes == [f"SB{n:05d}" for n in range(1, 31)]
    assert [len(page) for page in pages] == [7, 7, 7, 7, 2]
    assert [c for p in await all_pages(engine, BagFilter(code="SB0002"), 50) for c in p] == [
        f"SB{n:05d}" for n in range(20, 30)
    ]


async def test_exact_code_finds_only_that_bag(engine):
    await bulk_bags(engine, ["SB00001", "SB000011", "SB00002"], "parent", "jaipur")
    found = await search_bags(engine, BagFilter(code="SB00001", match="exact"))
    assert [row.code for row in found.rows] == ["SB00001"]


async def test_batches_of_an_export_cover_every_row_once(engine):
    await bulk_bags(engine, [f"E{n:05d}" for n in range(2_345)], "child", "hisar")
    batches = bag_batches(engine, BagFilter(), size=1_000)
    seen = [row.code async for batch in batches for row in batch]
    assert len(seen) == len(set(seen)) == 2_345


@pytest.fixture
async def warehouse(engine):
    """jaipur: SB00001 (3 children, on bill B-1), SB00002 (none), a child unlinked by undo;
    indore: SB00003 with one child, scanned by another dispatcher."""
    jaipur = await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    indore = await make_actor(engine, Role.DISPATCHER, "indore", name="meena")
    biller = await make_actor(engine, Role.BILLER, name="billy")
    await stock(engine, jaipur, {"SB00001": ["CH001", "CH002", "CH003"], "SB00002": ["CH004"]})
    await undo_last_child(engine, jaipur, new_id(), "SB00002")  # CH004 is now unlinked
    await stock(engine, indore, {"SB00003": ["CH005"]})
    await create_bill(engine, biller, new_id(), "B-1", 2)
    await link_bill_parent(engine, biller, new_id(), "B-1", "SB00001")
    return {"jaipur": jaipur, "indore": indore}


async def codes_for(engine, **filters) -> set[str]:
    page = await search_bags(engine, BagFilter(**filters), size=100)
    return {row.code for row in page.rows}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"kind": "parent"}, {"SB00001", "SB00002", "SB00003"}),
        ({"kind": "child"}, {"CH001", "CH002", "CH003", "CH004", "CH005"}),
        ({"area": "indore"}, {"SB00003", "CH005"}),
        ({"linked": "yes"}, {"SB00001", "SB00003", "CH001", "CH002", "CH003", "CH005"}),
        ({"linked": "no"}, {"SB00002", "CH004"}),
        ({"linked": "no", "kind": "child"}, {"CH004"}),
        ({"billed": "yes"}, {"SB00001", "CH001", "CH002", "CH003"}),
        ({"billed": "no", "area": "jaipur"}, {"SB00002", "CH004"}),
        ({"scanned_by": "MEENA"}, {"SB00003", "CH005"}),
        ({"scanned_by": "nobody"}, set()),
        ({"code": "CH00", "kind": "child", "area": "jaipur"}, {"CH001", "CH002", "CH003", "CH004"}),
    ],
)
async def test_each_filter_narrows_the_search(engine, warehouse, filters, expected):
    assert await codes_for(engine, **filters) == expected


async def test_date_range_includes_both_days(engine, warehouse):
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE bag SET created_at = :at WHERE code IN ('SB00002', 'CH004')"),
            {"at": datetime(2025, 1, 10, 23, 59, tzinfo=UTC)},
        )
        await conn.execute(
            text("UPDATE bag SET created_at = :at WHERE code = 'SB00003'"),
            {"at": datetime(2025, 1, 12, 0, 0, tzinfo=UTC)},
        )
    day = date(2025, 1, 10)
    assert await codes_for(engine, since=day, until=day) == {"SB00002", "CH004"}
    assert await codes_for(engine, since=day, until=day + timedelta(days=2)) == {
        "SB00002",
        "CH004",
        "SB00003",
    }
    assert await codes_for(engine, until=date(2025, 1, 11)) == {"SB00002", "CH004"}


async def test_search_rows_name_the_parent_and_the_bill(engine, warehouse):
    rows = {row.code: row for row in (await search_bags(engine, BagFilter(), size=50)).rows}
    assert rows["CH002"].parent_code == "SB00001"
    assert rows["CH002"].bill_number == "B-1"
    assert rows["SB00001"].bill_number == "B-1"
    assert rows["SB00001"].child_count == 3
    assert rows["CH004"].parent_code is None and rows["CH004"].bill_number is None
    assert rows["SB00003"].owner == "meena"


async def test_a_dispatcher_filter_is_held_to_their_own_area(engine, warehouse):
    asked_for_indore = BagFilter(area="indore").within("jaipur")
    found = {row.code for row in (await search_bags(engine, asked_for_indore)).rows}
    assert found == {"SB00001", "SB00002", "CH001", "CH002", "CH003", "CH004"}


async def test_bag_detail_has_children_history_and_respects_the_area(engine, warehouse):
    detail = await find_bag(engine, " sb00001 ", None)
    assert detail is not None
    assert [child.code for child in detail.children] == ["CH001", "CH002", "CH003"]
    assert detail.bag.bill_number == "B-1"
    assert {scan.action for scan in detail.scans} == {"scan_parent"}
    child = await find_bag(engine, "CH002", "jaipur")
    assert child is not None and [s.action for s in child.scans] == ["link_child"]
    assert await find_bag(engine, "SB00003", "jaipur") is None  # another area: as if unknown
    assert await find_bag(engine, "SB00003", "indore") is not None
    assert await find_bag(engine, "NOPE1", None) is None


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"code": "SB<1>"}, "only letters, digits and '-'"),
        ({"code": "X" * 101}, "at most 100 characters"),
        ({"since": "10/01/2025"}, "is not a date"),
        ({"since": "2025-02-02", "until": "2025-02-01"}, "swap them"),
        ({"kind": "box"}, "Type must be one of"),
        ({"linked": "maybe"}, "Linked must be one of"),
    ],
)
def test_unreadable_filters_are_reported_not_raised(args, problem):
    where = BagFilter.parse(args)
    assert any(problem in text for text in where.problems)


def test_a_filter_reads_back_into_the_same_query_arguments():
    args = {"code": " sb0 ", "kind": "parent", "linked": "no", "since": "2025-01-02"}
    where = BagFilter.parse(args)
    assert where.code == "SB0"
    assert BagFilter.parse(where.query_args()) == where


async def test_an_unreadable_cursor_starts_from_the_top(engine):
    await bulk_bags(engine, ["A0001", "A0002"], "child", "jaipur")
    for cursor in ("nonsense", "1.2.3", "-5.x", "99999999999999999999999.1"):
        page = await search_bags(engine, BagFilter(), cursor)
        assert len(page.rows) == 2
