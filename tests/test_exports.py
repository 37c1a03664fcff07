"""SPEC §7 exports: bags, bills, one bill and user activity, as CSV and Excel, streamed with every
row, checked by role like the pages (dispatchers get only their own area's bags)."""

import csv
import io

import openpyxl
import pytest

from tests.conftest import make_actor
from tests.db import new_id, value
from tests.test_admin import (
    ADMIN_PASSWORD,
    fast_hashing,  # noqa: F401  (autouse: cheap bcrypt for the admin)
    signed_in_as,
)
from tests.warehouse import bulk_bags, stock
from traitortrack.domain.roles import Role
from traitortrack.services.bills import create_bill, link_bill_parent
from traitortrack.services.scans import link_child
from traitortrack.web import spreadsheets


@pytest.fixture
async def warehouse(engine):
    ravi = await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    meena = await make_actor(engine, Role.DISPATCHER, "indore", name="meena")
    billy = await make_actor(engine, Role.BILLER, name="billy")
    await make_actor(engine, Role.SUPERVISOR, name="sue")
    await stock(engine, ravi, {"SB00001": ["CH001", "CH002"], "SB00002": []})
    await link_child(engine, ravi, new_id(), "SB00001", "CH001")  # a duplicate
    await link_child(engine, ravi, new_id(), "SB00001", "SB00002")  # refused: a parent
    await stock(engine, meena, {"SB00003": ["CH003"]})
    await create_bill(engine, billy, new_id(), "=HYPERLINK(1)", 2, "+danger")
    await link_bill_parent(engine, billy, new_id(), "=HYPERLINK(1)", "SB00001")
    await create_bill(engine, billy, new_id(), "B-2", 5)


def read_csv(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")  # the byte-order mark Excel needs for UTF-8
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


def read_xlsx(body: bytes) -> list[dict[str, object]]:
    book = openpyxl.load_workbook(io.BytesIO(body), read_only=True)
    rows = []
    for sheet in book.worksheets:
        values = list(sheet.iter_rows(values_only=True))
        rows += [dict(zip(values[0], row, strict=True)) for row in values[1:]]
    return rows


async def download(browser, path: str) -> tuple[int, bytes, dict]:
    response = await browser.get(path)
    return response.status_code, await response.get_data(), response.headers


async def test_bag_exports_have_every_matching_row_in_both_formats(app, engine, warehouse):
    sue = await signed_in_as(app, "sue")
    status, body, headers = await download(sue, "/exports/bags.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"].startswith('attachment; filename="bags-')
    rows = read_csv(body)
    assert len(rows) == await value(engine, "SELECT count(*) FROM bag") == 6
    by_code = {row["Code"]: row for row in rows}
    assert by_code["CH001"]["Parent bag"] == "SB00001"
    assert by_code["CH001"]["Bill"] == "'=HYPERLINK(1)"  # shown as text, never run as a formula
    assert by_code["SB00001"]["Child bags"] == "2"
    status, body, headers = await download(sue, "/exports/bags.xlsx?kind=parent&area=jaipur")
    assert headers["Content-Type"] == spreadsheets.XLSX_TYPE
    sheet = read_xlsx(body)
    assert sorted(row["Code"] for row in sheet) == ["SB00001", "SB00002"]
    assert sheet[0]["First scanned (UTC)"].year >= 2024  # a real date, not text


async def test_a_dispatcher_exports_only_their_own_area(app, engine, warehouse):
    ravi = await signed_in_as(app, "ravi")
    _, body, _ = await download(ravi, "/exports/bags.csv?area=indore")
    assert {row["Code"] for row in read_csv(body)} == {"SB00001", "SB00002", "CH001", "CH002"}
    assert (await ravi.get("/exports/bills.csv")).status_code == 403
    assert (await ravi.get("/exports/activity.csv")).status_code == 403


async def test_bill_exports_count_from_the_links(app, engine, warehouse):
    billy = await signed_in_as(app, "billy")
    _, body, _ = await download(billy, "/exports/bills.csv")
    rows = {row["Bill"]: row for row in read_csv(body)}
    assert set(rows) == {"'=HYPERLINK(1)", "B-2"}
    first = rows["'=HYPERLINK(1)"]
    assert first["Description"] == "'+danger"
    assert (first["Parent bags"], first["Child bags"], first["Actual weight (kg)"]) == (
        "1",
        "2",
        "2",
    )
    assert first["Expected weight (kg)"] == "60"
    _, body, _ = await download(billy, "/exports/bills.xlsx?status=new")
    assert [row["Bill"] for row in read_xlsx(body)] == ["B-2"]
    bill_id = await value(engine, "SELECT id FROM bill WHERE number = '=HYPERLINK(1)'")
    status, body, headers = await download(billy, f"/exports/bills/{bill_id}.xlsx")
    assert status == 200 and 'filename="bill-_HYPERLINK_1_-' in headers["Content-Disposition"]
    assert [(r["Parent bag"], r["Child bags"]) for r in read_xlsx(body)] == [("SB00001", 2)]
    assert (await billy.get("/exports/activity.csv")).status_code == 403


async def test_user_activity_counts_scans_per_person_and_day(app, engine, warehouse):
    admin = await signed_in_as(app, "admin", ADMIN_PASSWORD)
    _, body, _ = await download(admin, "/exports/activity.csv")
    rows = {row["User"]: row for row in read_csv(body)}
    assert set(rows) == {"ravi", "meena", "billy"}
    ravi = rows["ravi"]
    assert (ravi["Parent bags scanned"], ravi["Child bags linked"]) == ("2", "2")
    assert (ravi["Duplicates"], ravi["Rejected"], ravi["All scans"]) == ("1", "1", "6")
    assert rows["billy"]["Bill changes"] == "3"
    _, body, _ = await download(admin, "/exports/activity.xlsx?user=MEENA")
    assert [(r["User"], r["All scans"]) for r in read_xlsx(body)] == [("meena", 2)]
    _, body, _ = await download(admin, "/exports/activity.csv?since=2001-01-01&until=2001-01-31")
    assert read_csv(body) == []


async def test_bad_export_requests_say_what_to_do(app, engine, warehouse):
    sue = await signed_in_as(app, "sue")
    wrong_format = await sue.get("/exports/bags.pdf")
    assert wrong_format.status_code == 404
    assert "change the end of the address" in await wrong_format.get_data(as_text=True)
    bad_date = await sue.get("/exports/activity.csv?since=yesterday")
    assert bad_date.status_code == 400
    assert "use YYYY-MM-DD" in await bad_date.get_data(as_text=True)


async def test_a_large_export_streams_every_row(app, engine, warehouse, monkeypatch):
    await bulk_bags(engine, [f"Z{n:06d}" for n in range(5_003)], "child", "hisar")
    sue = await signed_in_as(app, "sue")
    _, body, _ = await download(sue, "/exports/bags.csv?area=hisar")
    assert len(read_csv(body)) == 5_003
    # A full Excel sheet continues on the next one (small limit here; Excel's is 1,048,576).
    monkeypatch.setattr(spreadsheets, "EXCEL_MAX_ROWS", 2_000)
    _, body, _ = await download(sue, "/exports/bags.xlsx?area=hisar")
    book = openpyxl.load_workbook(io.BytesIO(body), read_only=True)
    assert book.sheetnames == ["Bags", "Bags (2)", "Bags (3)"]
    assert len(read_xlsx(body)) == 5_003


async def test_the_exports_page_offers_what_the_role_may_download(app, engine, warehouse):
    ravi = await signed_in_as(app, "ravi")
    html = await (await ravi.get("/exports")).get_data(as_text=True)
    assert "/exports/bags.csv" in html and "/exports/bills.csv" not in html
    sue = await signed_in_as(app, "sue")
    html = await (await sue.get("/exports")).get_data(as_text=True)
    assert "/exports/activity.csv" in html and "/exports/bills.csv" in html
