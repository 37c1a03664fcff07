"""Bills in a real browser (SPEC §3, §7): a biller creates a bill, scans parents onto it as fast
as a keyboard-wedge scanner types, sees counts and weights (live, as a dispatcher adds a child
to one of its parents), completes it and downloads its exports; the pages on a phone."""

import csv
import io

import openpyxl
import pytest

from tests.browser import PHONE, in_another_loop, screenshot, sign_in
from tests.conftest import make_actor
from tests.db import new_id
from tests.warehouse import stock
from traitortrack.domain.roles import Role
from traitortrack.services.scans import link_child

PASSWORD = "Secret-pass1"  # tests/conftest.py make_actor
DESKTOP = {"width": 1280, "height": 900}
# Elements reaching past the right edge of the screen (a page must not scroll sideways).
WIDEST = """() => Array.from(document.querySelectorAll("body *"))
  .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1
    && !el.closest("table"))
  .map((el) => el.tagName + "." + el.className).slice(0, 5)"""
PARENTS = {"SB10001": 30, "SB10002": 25, "SB10003": 12, "SB10004": 5}


@pytest.fixture
def expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
    return expect


@pytest.fixture
async def warehouse(engine):
    """Parents full of children, scanned before the browser starts (Playwright's sync API keeps
    its own event loop running in the test's thread)."""
    ravi = await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    await make_actor(engine, Role.BILLER, name="billy")
    await stock(
        engine,
        ravi,
        {code: [f"{code[2:]}C{n:02d}" for n in range(count)] for code, count in PARENTS.items()},
    )
    return ravi


def wedge(page, code: str) -> None:
    page.keyboard.type(code, delay=5)
    page.keyboard.press("Enter")


def test_a_biller_builds_a_bill_by_scanning_completes_and_exports_it(
    warehouse, settings, web_server, browser, expect
):
    base = web_server.base
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    sign_in(page, base, "billy", PASSWORD)
    page.goto(f"{base}/bills")
    page.click("summary:has-text('New bill')")
    page.fill("#new-bill input[name=number]", "DEL-001")
    page.fill("#new-bill input[name=capacity]", "3")
    page.fill("#new-bill input[name=description]", "Truck HR-55 to Delhi")
    page.click("#new-bill button[type=submit]")
    expect(page.locator(".banner.ok")).to_have_text("Bill DEL-001 created (0/3)")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

    # Fast as a wedge scanner, without waiting for answers: they are saved in order.
    expect(page.locator("#bill-scan-code")).to_be_focused()
    for code in ("SB10001", "sb10002", "SB10002", "SB99999", "SB10003", "SB10004"):
        wedge(page, code)
    log = page.locator("#scan-log li")
    expect(log).to_have_count(6)
    expect(page.locator("#scan-log li[data-outcome=pending]")).to_have_count(0)
    outcomes = [item.get_attribute("data-outcome") for item in log.all()][::-1]
    assert outcomes == ["ok", "ok", "duplicate", "rejected", "ok", "rejected"]
    messages = log.all_inner_texts()[::-1]
    assert messages[0] == "SB10001 added to bill DEL-001 (1/3)"
    assert "scanned on the scanner first" in messages[3]
    assert "Raise the capacity (Edit) or remove a parent bag first." in messages[5]
    expect(page.locator("[data-total=linked]")).to_have_text("3/3")
    expect(page.locator("[data-total=children]")).to_have_text("67")
    expect(page.locator("[data-total=actual]")).to_have_text("67 kg")
    expect(page.locator("[data-total=expected]")).to_have_text("90 kg")
    expect(page.locator("#bill-live tr[data-parent-code]")).to_have_count(3)
    screenshot(page, "bill-scanned-desktop")

    # A dispatcher adds a child to one of the bill's parents: the totals follow, no reload.
    async def add_child(engine):
        return await link_child(engine, warehouse, new_id(), "SB10003", "LIVE0001")

    assert in_another_loop(settings, add_child).ok
    expect(page.locator("[data-total=children]")).to_have_text("68")
    expect(page.locator("[data-total=actual]")).to_have_text("68 kg")
    expect(page.locator("tr[data-parent-code=SB10003]")).to_contain_text("13/30")

    page.click("button[data-complete]")
    expect(page.locator(".banner.ok")).to_have_text("Bill DEL-001 completed (3/3)")
    expect(page.locator("[data-bill-status]")).to_have_text("completed")
    screenshot(page, "bill-completed-desktop")

    with page.expect_download() as download:
        page.click("a:has-text('CSV')")
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text("utf-8-sig"))))
    assert [(r["Parent bag"], r["Child bags"]) for r in rows] == [
        ("SB10001", "30"),
        ("SB10002", "25"),
        ("SB10003", "13"),
    ]

    page.goto(f"{base}/bills")
    expect(page.locator("tr[data-bill='DEL-001']")).to_contain_text("68 / 90 kg")
    with page.expect_download() as download:
        page.click("a:has-text('Export Excel')")
    assert download.value.suggested_filename.startswith("bills-")
    assert download.value.suggested_filename.endswith(".xlsx")
    body = io.BytesIO(download.value.path().read_bytes())
    sheet = openpyxl.load_workbook(body, read_only=True).active
    values = list(sheet.iter_rows(values_only=True))
    assert values[0][:3] == ("Bill", "Description", "Status")
    assert values[1][:3] == ("DEL-001", "Truck HR-55 to Delhi", "completed")
    screenshot(page, "bills-list-desktop")

    page.goto(f"{base}/bills")
    page.click("a:has-text('DEL-001')")
    page.click("a:has-text('Print')")
    expect(page.locator("h1")).to_have_text("Dispatch bill DEL-001")
    page.emulate_media(media="print")
    expect(page.locator(".topbar")).to_be_hidden()
    screenshot(page, "bill-print")

    page.emulate_media(media="screen")
    page.goto(f"{base}/bags?code=SB1")
    expect(page.locator("#bag-results tbody tr")).to_have_count(4)
    screenshot(page, "bags-search-desktop")
    page.click("#bag-results a:has-text('SB10003')")
    expect(page.locator("#children tbody tr")).to_have_count(13)
    expect(page.locator("a:has-text('DEL-001')")).to_be_visible()
    screenshot(page, "bag-detail-desktop")
    page.goto(f"{base}/exports")
    screenshot(page, "exports-desktop")
    context.close()


def test_bill_and_bag_pages_fit_a_phone(warehouse, web_server, browser, expect):
    base = web_server.base
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    sign_in(page, base, "billy", PASSWORD)
    page.goto(f"{base}/bills")
    page.click("summary:has-text('New bill')")
    page.fill("#new-bill input[name=number]", "PH-1")
    page.fill("#new-bill input[name=capacity]", "2")
    page.click("#new-bill button[type=submit]")
    expect(page.locator(".banner.ok")).to_have_text("Bill PH-1 created (0/2)")
    wedge(page, "SB10002")
    expect(page.locator("[data-total=linked]")).to_have_text("1/2")
    screenshot(page, "bill-phone")
    wide = page.evaluate(WIDEST)
    assert wide == [], f"the bill page scrolls sideways on a phone: {wide}"
    page.goto(f"{base}/bills")
    screenshot(page, "bills-list-phone")
    page.goto(f"{base}/bags?kind=parent")
    expect(page.locator("#bag-results tbody tr")).to_have_count(4)
    assert page.evaluate(WIDEST) == []
    screenshot(page, "bags-search-phone")
    page.click("#bag-results a:has-text('SB10004')")
    expect(page.locator("h1")).to_have_text("Parent bag SB10004")
    expect(page.locator("#children tbody tr")).to_have_count(5)
    screenshot(page, "bag-detail-phone")
    context.close()

    # A dispatcher looks bags up in their own area only.
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    sign_in(page, base, "ravi", PASSWORD)
    page.goto(f"{base}/bags?code=10001C0")
    expect(page.locator("h1")).to_have_text("Bags in jaipur")
    expect(page.locator("#bag-results tbody tr")).to_have_count(10)
    assert page.evaluate(WIDEST) == []
    screenshot(page, "bags-search-dispatcher-phone")
    context.close()
