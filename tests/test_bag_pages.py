"""SPEC §7 and §4 through the pages: bag search and detail, dispatchers held to their area, and
the admin's delete refused with the reason while anything depends on the bag."""

import re

import pytest

from tests.conftest import make_actor
from tests.db import new_id, value
from tests.test_admin import (
    ADMIN_PASSWORD,
    fast_hashing,  # noqa: F401  (autouse: cheap bcrypt for the admin)
    page_text,
    signed_in_as,
)
from tests.warehouse import bulk_bags, stock
from traitortrack.domain.roles import Role
from traitortrack.services.bills import create_bill, link_bill_parent


@pytest.fixture
async def warehouse(engine):
    ravi = await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    meena = await make_actor(engine, Role.DISPATCHER, "indore", name="meena")
    billy = await make_actor(engine, Role.BILLER, name="billy")
    await stock(engine, ravi, {"SB00001": ["CH001", "CH002"], "SB00002": []})
    await stock(engine, meena, {"SB00003": ["CH003"]})
    await create_bill(engine, billy, new_id(), "B-1", 2)
    await link_bill_parent(engine, billy, new_id(), "B-1", "SB00001")


def result_codes(html: str) -> set[str]:
    return set(re.findall(r'<tr data-code="([^"]+)"', html))


async def test_a_dispatcher_searches_only_their_own_area_whatever_they_ask(app, warehouse):
    ravi = await signed_in_as(app, "ravi")
    html = await page_text(await ravi.get("/bags?area=indore"))
    assert result_codes(html) == {"SB00001", "SB00002", "CH001", "CH002"}
    assert "Bags in jaipur" in html
    assert 'name="area"' not in html  # no area choice to make
    other = await ravi.get("/bags/SB00003")
    assert other.status_code == 404
    assert "no bag SB00003 in your area (jaipur)" in await page_text(other)
    own = await page_text(await ravi.get("/bags/SB00001"))
    assert "CH002" in own and "B-1" in own
    assert "/bills/" not in own  # the bill is named, but dispatchers have no bill pages


async def test_a_supervisor_filters_by_area_and_follows_pages(app, engine, warehouse):
    await bulk_bags(engine, [f"HX{n:04d}" for n in range(75)], "child", "hisar")
    await make_actor(engine, Role.SUPERVISOR, name="sue")
    sue = await signed_in_as(app, "sue")
    first = await page_text(await sue.get("/bags?area=hisar"))
    assert len(result_codes(first)) == 50
    next_link = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = await page_text(await sue.get(next_link))
    assert len(result_codes(second)) == 25
    assert not result_codes(first) & result_codes(second)
    assert 'rel="next"' not in second and "First page" in second


async def test_a_bag_detail_shows_children_parent_bill_and_history(app, warehouse):
    billy = await signed_in_as(app, "billy")
    parent = await page_text(await billy.get("/bags/sb00001"))
    assert "Parent bag SB00001" in parent
    assert "CH001" in parent and "CH002" in parent and "2/30" in parent
    assert re.search(r'href="/bills/\d+">B-1<', parent)
    child = await page_text(await billy.get("/bags/CH001"))
    assert 'href="/bags/SB00001"' in child and "link child" in child


async def test_a_filter_problem_is_shown_with_what_to_do(app, warehouse):
    billy = await signed_in_as(app, "billy")
    response = await billy.get("/bags?code=SB%3C1&since=01-02-2025")
    html = await page_text(response)
    assert "only letters, digits and &#39;-&#39;: check what was typed." in html
    assert "use YYYY-MM-DD" in html


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("SB00001", "is on bill B-1; remove it from the bill first."),
        ("SB00003", "still holds 1 child bags; unlink them first."),
        ("CH001", "is linked to parent bag SB00001; undo that link first."),
    ],
)
async def test_deleting_a_bag_something_depends_on_is_refused_with_the_reason(
    app, engine, warehouse, code, reason
):
    admin = await signed_in_as(app, "admin", ADMIN_PASSWORD)
    response = await admin.post(f"/bags/{code}/delete", {"client_id": new_id()})
    assert response.status_code == 400
    assert reason in await page_text(response)
    assert await value(engine, "SELECT count(*) FROM bag WHERE code = :c", c=code) == 1


async def test_an_admin_deletes_a_bag_nothing_depends_on(app, engine, warehouse):
    admin = await signed_in_as(app, "admin", ADMIN_PASSWORD)
    response = await admin.post("/bags/SB00002/delete", {"client_id": new_id()})
    assert response.status_code == 303
    html = await page_text(await admin.get(response.headers["Location"]))
    assert "Bag SB00002 deleted" in html
    assert await value(engine, "SELECT count(*) FROM bag WHERE code = 'SB00002'") == 0
    again = await admin.post("/bags/SB00002/delete", {"client_id": new_id()})
    assert again.status_code == 404
    assert "deleted already: search again" in await page_text(again)
    billy = await signed_in_as(app, "billy")
    assert (await billy.post("/bags/CH002/delete", {"client_id": new_id()})).status_code == 403


@pytest.mark.parametrize(
    ("path", "status"),
    [
        # A NUL anywhere is refused at the edge (traitortrack.web.inputs), before any page.
        ("/bags?scanned_by=%00ravi&code=%00", 400),
        ("/bags?after=%00", 400),
        ("/bags/AB%00CD", 400),
        ("/bags/%F0%9F%92%A9", 404),
        ("/bills?number=%00B", 400),
        ("/bills?number=b%F4%8F%BF%BF", 200),
        ("/bills?number=b&after=%00", 400),
        ("/bills?status=lost", 200),
        ("/exports/activity.csv?user=%00", 400),
        ("/exports/bills.csv?status=lost", 400),
    ],
)
async def test_odd_query_arguments_never_break_a_page(app, warehouse, path, status):
    admin = await signed_in_as(app, "admin", ADMIN_PASSWORD)
    response = await admin.get(path)
    assert response.status_code == status, await page_text(response)
