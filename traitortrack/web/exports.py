"""Exports (SPEC §7): bags, bills, one bill's parents and user activity, as CSV or Excel.

Each export takes the same filters as its page and the same roles: dispatchers export only their
own area's bags. Downloads stream with no row limit (see :mod:`traitortrack.web.spreadsheets`),
so they may take longer than an ordinary response: they have no response timeout.
"""

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from quart import Blueprint, Response, render_template, request

from traitortrack.domain.roles import Role
from traitortrack.runtime import runtime
from traitortrack.services.activity_queries import ActivityFilter, activity_batches
from traitortrack.services.bag_queries import BagFilter, bag_batches
from traitortrack.services.bill_queries import BillFilter, BillParentRow, bill_batches, find_bill
from traitortrack.web.access import STAFF, VIEWING, account, page
from traitortrack.web.bags import own_area
from traitortrack.web.forms import not_found
from traitortrack.web.spreadsheets import (
    CSV_TYPE,
    XLSX_TYPE,
    Column,
    csv_stream,
    rows_of,
    xlsx_stream,
)

blueprint = Blueprint("exports", __name__, url_prefix="/exports")

OVERSEEING = frozenset({Role.ADMIN, Role.SUPERVISOR})
FORMATS = ("csv", "xlsx")

BAG_COLUMNS = (
    Column("Code", lambda b: b.code, 16),
    Column("Type", lambda b: b.kind, 8),
    Column("Dispatch area", lambda b: b.area, 14),
    Column("Status", lambda b: b.status, 10),
    Column("Child bags", lambda b: b.child_count if b.kind == "parent" else None, 10),
    Column("Parent bag", lambda b: b.parent_code, 14),
    Column("Bill", lambda b: b.bill_number, 14),
    Column("First scanned by", lambda b: b.owner, 16),
    Column("First scanned (UTC)", lambda b: b.created_at, 20),
)


BILL_COLUMNS = (
    Column("Bill", lambda b: b.number, 16),
    Column("Description", lambda b: b.description, 30),
    Column("Status", lambda b: b.status, 11),
    Column("Capacity (parent bags)", lambda b: b.capacity, 10),
    Column("Parent bags", lambda b: b.linked, 10),
    Column("Child bags", lambda b: b.children, 10),
    Column("Actual weight (kg)", lambda b: b.totals.actual_weight_kg, 12),
    Column("Expected weight (kg)", lambda b: b.totals.expected_weight_kg, 12),
    Column("Created (UTC)", lambda b: b.created_at, 20),
    Column("Created by", lambda b: b.created_by, 14),
    Column("Last change (UTC)", lambda b: b.updated_at, 20),
)

PARENT_COLUMNS = (
    Column("Parent bag", lambda p: p.code, 16),
    Column("Dispatch area", lambda p: p.area, 14),
    Column("Status", lambda p: p.status, 10),
    Column("Child bags", lambda p: p.children, 10),
    Column("Weight (kg)", lambda p: p.children, 10),
    Column("Added (UTC)", lambda p: p.linked_at, 20),
    Column("Added by", lambda p: p.linked_by, 14),
)

ACTIVITY_COLUMNS = (
    Column("Day (UTC)", lambda a: a.day, 12),
    Column("User", lambda a: a.username or "(deleted user)", 16),
    Column("Role", lambda a: a.role, 11),
    Column("Dispatch area", lambda a: a.area, 14),
    Column("Parent bags scanned", lambda a: a.parents_scanned, 10),
    Column("Child bags linked", lambda a: a.children_linked, 10),
    Column("Undos", lambda a: a.undos, 8),
    Column("Bill changes", lambda a: a.bill_changes, 10),
    Column("Duplicates", lambda a: a.duplicates, 10),
    Column("Rejected", lambda a: a.rejected, 10),
    Column("All scans", lambda a: a.total, 10),
)


async def _refuse(problems: Sequence[str]) -> tuple[str, int]:
    message = " ".join(problems)
    return await render_template("errors/error.html", code=400, message=message), 400


async def _download(
    name: str,
    fmt: str,
    columns: Sequence[Column],
    batches: AsyncIterator[list[Any]],
) -> Response:
    if fmt not in FORMATS:
        await not_found("Exports come as .csv or .xlsx: change the end of the address.")
    stamp = runtime().clock().strftime("%Y%m%d-%H%M")
    if fmt == "csv":
        body, mimetype = csv_stream(columns, batches), CSV_TYPE
    else:
        body, mimetype = xlsx_stream(columns, batches, name.split("-")[0].capitalize()), XLSX_TYPE
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.{fmt}"'
    response.timeout = None  # a big export to a slow line may take minutes
    return response


@blueprint.get("")
@page(STAFF)
async def index() -> str:
    who = account()
    assert who is not None
    return await render_template(
        "exports/index.html",
        limited_to=own_area(),
        sees_bills=who.role in VIEWING,
        sees_activity=who.role in OVERSEEING,
    )


@blueprint.get("/bags.<fmt>")
@page(STAFF)
async def bags(fmt: str) -> Response | tuple[str, int]:
    where = BagFilter.parse(request.args).within(own_area())
    if where.problems:
        return await _refuse(where.problems)
    return await _download("bags", fmt, BAG_COLUMNS, bag_batches(runtime().engine, where))


@blueprint.get("/bills.<fmt>")
@page(VIEWING)
async def bills(fmt: str) -> Response | tuple[str, int]:
    where = BillFilter.parse(request.args)
    if where.problems:
        return await _refuse(where.problems)
    return await _download("bills", fmt, BILL_COLUMNS, bill_batches(runtime().engine, where))


@blueprint.get("/bills/<int:bill_id>.<fmt>")
@page(VIEWING)
async def bill(bill_id: int, fmt: str) -> Response:
    found = await find_bill(runtime().engine, bill_id)
    if found is None:
        await not_found("That bill does not exist (it may have been deleted): see the bill list.")
    parents: list[BillParentRow] = found.parents
    safe_number = re.sub(r"[^A-Za-z0-9_-]", "_", found.bill.number)
    return await _download(f"bill-{safe_number}", fmt, PARENT_COLUMNS, rows_of(parents))


@blueprint.get("/activity.<fmt>")
@page(OVERSEEING)
async def activity(fmt: str) -> Response | tuple[str, int]:
    where = ActivityFilter.parse(request.args)
    if where.problems:
        return await _refuse(where.problems)
    state = runtime()
    batches = activity_batches(state.engine, where, state.clock().date())
    return await _download("activity", fmt, ACTIVITY_COLUMNS, batches)
