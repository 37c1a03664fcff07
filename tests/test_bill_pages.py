"""SPEC §3 bills through the pages: the list, one bill, scanning parents on, weights from the links,
complete, reopen, delete; supervisors read, billers manage, admins delete."""

import re

import pytest
from sqlalchemy import text

from tests.conftest import make_actor
from tests.db import new_id, value
from tests.test_admin import (
    ADMIN_PASSWORD,
    Browser,
    fast_hashing,  # noqa: F401  (autouse: cheap bcrypt for the admin)
    page_text,
    signed_in_as,
)
from tests.warehouse import stock
from tests.web import Clock
from traitortrack.domain.roles import Role
from traitortrack.runtime import runtime
from traitortrack.services.bill_queries import BillFilter, bill_batches, find_bill, list_bills
from traitortrack.services.bills import create_bill, link_bill_parent

CLIENT_ID = re.compile(r'name="client_id" value="([^"]+)"')


@pytest.fixture
async def parents(engine):
    """SB00001 with 30 children, SB00002 with 12, SB00003 with 0; and a child CH999."""
    dispatcher = await make_actor(engine, Role.DISPATCHER, "jaipur")
    await stock(
        engine,
        dispatcher,
        {
            "SB00001": [f"A{n:04d}" for n in range(30)],
            "SB00002": [f"B{n:04d}" for n in range(12)],
            "SB00003": [],
            "SB00004": ["CH999"],
        },
    )


async def biller_browser(app, engine) -> Browser:
    await make_actor(engine, Role.BILLER, name="billy")
    return await signed_in_as(app, "billy")


async def create(browser: Browser, number: str, capacity: int, description: str = ""):
    page = await page_text(await browser.get("/bills"))
    client_id = CLIENT_ID.search(page).group(1)
    return await browser.post(
        "/bills",
        {
            "number": number,
            "capacity": str(capacity),
            "description": description,
            "client_id": client_id,
        },
    )


def banner(html: str, kind: str) -> str:
    """The page's banners of one kind, newest last, joined by " | "."""
    found = re.findall(rf'class="banner {kind}" role="\w+">([^<]+)<', html)
    return " | ".join(message.strip() for message in found)


async def test_a_biller_creates_a_bill_and_lands_on_it(app, engine):
    biller = await biller_browser(app, engine)
    response = await create(biller, "B-100", 3, "Truck to Delhi")
    assert response.status_code == 303
    bill_page = await page_text(await biller.get(response.headers["Location"]))
    assert "Bill B-100 created (0/3)" in banner(bill_page, "ok")
    assert "Truck to Delhi" in bill_page
    assert 'id="bill-scan"' in bill_page
    listing = await page_text(await biller.get("/bills"))
    assert "B-100" in listing and "0/3" in listing


async def test_a_double_submitted_create_form_makes_one_bill(app, engine):
    biller = await biller_browser(app, engine)
    page = await page_text(await biller.get("/bills"))
    form = {"number": "B-7", "capacity": "2", "client_id": CLIENT_ID.search(page).group(1)}
    first = await biller.post("/bills", form)
    second = await biller.post("/bills", form)
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert await value(engine, "SELECT count(*) FROM bill") == 1


async def test_a_refused_create_says_what_to_do_and_keeps_the_form(app, engine):
    biller = await biller_browser(app, engine)
    await create(biller, "B-1", 3)
    response = await create(biller, "b-1", 3, "second try")
    html = await page_text(response)
    assert response.status_code == 400
    assert banner(html, "error") == (
        "Bill b-1 already exists. Use another number, or open the existing bill from the list."
    )
    assert 'value="second try"' in html


async def scan_onto(browser: Browser, bill_path: str, code: str, as_json: bool = True):
    headers = {"Accept": "application/json"} if as_json else {}
    return await browser.post(
        f"{bill_path}/parents",
        {"code": code, "client_id": new_id()},
        headers={"X-CSRF-Token": browser.token, **headers},
    )


async def test_scanning_parents_shows_counts_and_weights_from_the_links(app, engine, parents):
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-2", 3)).headers["Location"]
    answers = [
        await (await scan_onto(biller, bill_path, c)).get_json()
        for c in ("sb00001", "SB00002", "SB00002", "CH999", "SB77777")
    ]
    assert [a["outcome"] for a in answers] == ["ok", "ok", "duplicate", "rejected", "rejected"]
    assert answers[0]["message"] == "SB00001 added to bill B-2 (1/3)"
    assert answers[1]["bill"]["actual_weight_kg"] == 42
    assert answers[3]["message"].endswith("Scan the parent bag that holds it instead.")
    assert "scanned on the scanner first" in answers[4]["message"]
    live = await page_text(await biller.get(f"{bill_path}/live"))
    assert 'data-total="linked">2/3<' in live
    assert 'data-total="children">42<' in live
    assert 'data-total="actual">42 kg<' in live
    assert 'data-total="expected">90 kg<' in live
    assert '<progress max="3" value="2">' in live
    assert 'data-parent-code="SB00001"' in live and "30/30" in live


async def test_a_plain_form_scan_redirects_back_with_the_answer(app, engine, parents):
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-3", 1)).headers["Location"]
    response = await scan_onto(biller, bill_path, "SB00003", as_json=False)
    assert response.status_code == 303
    html = await page_text(await biller.get(bill_path))
    assert "SB00003 added to bill B-3 (1/1)" in banner(html, "ok")
    refused = await scan_onto(biller, bill_path, "SB00002", as_json=False)
    assert refused.status_code == 400
    assert banner(await page_text(refused), "error") == (
        "Bill capacity reached (1/1). Raise the capacity (Edit) or remove a parent bag first."
    )


async def test_complete_needs_a_full_bill_then_reopen_and_remove(app, engine, parents):
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-4", 2)).headers["Location"]
    await scan_onto(biller, bill_path, "SB00001")
    early = await biller.post(f"{bill_path}/complete", {"client_id": new_id()})
    assert early.status_code == 400
    assert banner(await page_text(early), "error") == (
        "Need 1 more bag. Scan more parent bags, or lower the capacity, then complete it."
    )
    await scan_onto(biller, bill_path, "SB00002")
    done = await biller.post(f"{bill_path}/complete", {"client_id": new_id()})
    assert done.status_code == 303
    html = await page_text(await biller.get(bill_path))
    assert "Bill B-4 completed (2/2)" in banner(html, "ok")
    assert 'data-bill-status="completed"' in html
    assert ">Reopen<" in html
    refused = await scan_onto(biller, bill_path, "SB00003")
    assert "reopen it to add bags" in (await refused.get_json())["message"]
    await biller.post(f"{bill_path}/reopen", {"client_id": new_id()})
    removed = await biller.post(
        f"{bill_path}/parents/remove", {"client_id": new_id(), "code": "SB00001"}
    )
    assert removed.status_code == 303
    live = await page_text(await biller.get(f"{bill_path}/live"))
    assert 'data-total="linked">1/2<' in live
    assert 'data-total="actual">12 kg<' in live


async def test_editing_capacity_and_description(app, engine, parents):
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-5", 2)).headers["Location"]
    await scan_onto(biller, bill_path, "SB00001")
    await scan_onto(biller, bill_path, "SB00002")
    too_small = await biller.post(
        f"{bill_path}/edit", {"client_id": new_id(), "capacity": "1", "description": "x"}
    )
    assert too_small.status_code == 400
    html = await page_text(too_small)
    assert banner(html, "error") == (
        "Capacity cannot be below the 2 parent bags already linked. "
        "Remove parent bags first, or choose a larger capacity."
    )
    saved = await biller.post(
        f"{bill_path}/edit", {"client_id": new_id(), "capacity": "60", "description": "Rail"}
    )
    assert saved.status_code == 303
    html = await page_text(await biller.get(bill_path))
    assert "Rail" in html and 'data-total="expected">1800 kg<' in html


async def test_a_supervisor_reads_bills_but_gets_no_forms(app, engine, parents):
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-6", 2)).headers["Location"]
    await make_actor(engine, Role.SUPERVISOR, name="sue")
    supervisor = await signed_in_as(app, "sue")
    html = await page_text(await supervisor.get(bill_path))
    assert "Bill B-6" in html
    assert "<form" not in html.split("<main", 1)[1]  # reading only (sign-out sits in the header)
    refused = await scan_onto(supervisor, bill_path, "SB00001")
    assert refused.status_code == 403


async def test_only_an_admin_deletes_and_must_type_the_number(app, engine, parents):
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-8", 2)).headers["Location"]
    await scan_onto(biller, bill_path, "SB00001")
    assert (await biller.post(f"{bill_path}/delete", {"client_id": new_id()})).status_code == 403
    admin = await signed_in_as(app, "admin", ADMIN_PASSWORD)
    unconfirmed = await admin.post(f"{bill_path}/delete", {"client_id": new_id(), "confirm": "no"})
    assert unconfirmed.status_code == 400
    assert "Type the bill number B-8" in banner(await page_text(unconfirmed), "error")
    deleted = await admin.post(f"{bill_path}/delete", {"client_id": new_id(), "confirm": "b-8"})
    assert deleted.status_code == 303 and deleted.headers["Location"] == "/bills"
    listing = await page_text(await admin.get("/bills"))
    assert "Bill B-8 deleted; its 1 parent bags are free again" in banner(listing, "ok")
    gone = await admin.get(bill_path)
    assert gone.status_code == 404
    assert "see the bill list" in await page_text(gone)


async def test_the_print_view_lists_parents_and_totals(app, engine, parents):
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-9", 2, "Print me")).headers["Location"]
    await scan_onto(biller, bill_path, "SB00002")
    html = await page_text(await biller.get(f"{bill_path}/print"))
    assert "Dispatch bill B-9" in html and "Print me" in html
    assert "<td>SB00002</td>" in html and "12 kg" in html and "60 kg" in html
    assert "data-print" in html and "<script>" not in html


# The list's read model -------------------------------------------------------------------------


async def make_bills(engine, biller, count: int) -> None:
    for n in range(count):
        await create_bill(engine, biller, new_id(), f"INV-{n:03d}", 5, f"bill {n}")


async def test_bill_list_pages_are_disjoint_and_newest_first(engine, biller):
    await make_bills(engine, biller, 23)
    seen, after = [], None
    while True:
        page = await list_bills(engine, BillFilter(), after, size=5)
        seen.extend(row.number for row in page.rows)
        if page.next is None:
            break
        after = page.next
    assert seen == [f"INV-{n:03d}" for n in reversed(range(23))]


async def test_bill_number_search_is_a_case_blind_prefix_in_number_order(engine, biller):
    await make_bills(engine, biller, 23)
    await create_bill(engine, biller, new_id(), "other-1", 5)
    where = BillFilter(number="inv-01")
    first = await list_bills(engine, where, None, size=6)
    assert [r.number for r in first.rows] == [f"INV-{n:03d}" for n in range(10, 16)]
    second = await list_bills(engine, where, first.next, size=6)
    assert [r.number for r in second.rows] == [f"INV-{n:03d}" for n in range(16, 20)]
    assert second.next is None


async def test_bill_list_filters_by_status_and_counts_from_the_links(engine, biller, parents):
    await make_bills(engine, biller, 3)
    await link_bill_parent(engine, biller, new_id(), "INV-001", "SB00001")
    await link_bill_parent(engine, biller, new_id(), "INV-001", "SB00002")
    processing = await list_bills(engine, BillFilter(status="processing"))
    assert [(r.number, r.linked, r.children) for r in processing.rows] == [("INV-001", 2, 42)]
    assert processing.rows[0].totals.actual_weight_kg == 42
    new = await list_bills(engine, BillFilter(status="new"))
    assert {r.number for r in new.rows} == {"INV-000", "INV-002"}
    batches = [row.number async for batch in bill_batches(engine, BillFilter(), 2) for row in batch]
    assert len(batches) == 3


async def test_bill_view_counts_children_from_the_links_not_a_cached_figure(
    engine, biller, parents
):
    await create_bill(engine, biller, new_id(), "W-1", 2)
    await link_bill_parent(engine, biller, new_id(), "W-1", "SB00002")
    bill_id = await value(engine, "SELECT id FROM bill WHERE number = 'W-1'")
    # A stale cached count must not leak into what the bill shows.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE bag SET child_count = 29 WHERE code = 'SB00002'"))
    found = await find_bill(engine, bill_id)
    assert found is not None
    assert [(p.code, p.children) for p in found.parents] == [("SB00002", 12)]
    assert found.totals.actual_weight_kg == 12
    assert found.totals.expected_weight_kg == 60


async def test_live_refreshes_do_not_keep_an_idle_biller_signed_in(app, engine):
    clock = runtime(app.app).clock = Clock()
    biller = await biller_browser(app, engine)
    bill_path = (await create(biller, "B-10", 2)).headers["Location"]
    await biller.get(bill_path)
    for _ in range(3):  # the page refreshing itself as others scan
        clock.advance(minutes=9)
        assert (await biller.get(f"{bill_path}/live")).status_code == 200
    clock.advance(minutes=6)  # 33 minutes since the person last did anything
    response = await biller.get(bill_path)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
