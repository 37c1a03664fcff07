"""Bills (SPEC §3): the list, one bill with its parent bags, and the changes billers make.

Thin views: read through :mod:`traitortrack.services.bill_queries`, change through
:mod:`traitortrack.services.bills`. A change that works redirects back to the bill (so a
reload never posts again); one that is refused re-renders the page with the reason and what
to do next. The bill page's script links scanned parents with ``Accept: application/json`` and
gets the answer as JSON instead.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from quart import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from traitortrack.domain.bills import MAX_CAPACITY, MAX_CAPACITY_ON_CREATE, MAX_NUMBER_LENGTH
from traitortrack.domain.linking import MAX_CHILDREN
from traitortrack.domain.roles import Permission, can
from traitortrack.runtime import runtime
from traitortrack.services import bills
from traitortrack.services.bill_queries import (
    STATUSES,
    BillFilter,
    BillView,
    bill_id_for,
    find_bill,
    list_bills,
)
from traitortrack.services.commands import Actor, Result
from traitortrack.web.access import ADMIN, BILLING, VIEWING, account, page
from traitortrack.web.forms import (
    Notice,
    acting,
    announce,
    flashed,
    new_client_id,
    not_found,
    notice,
    wants_json,
)

blueprint = Blueprint("bills", __name__)

Page = str | Response | tuple[str, int] | tuple[Response, int]


def _may(permission: Permission) -> bool:
    who = account()
    return who is not None and can(who.role, permission)


# The list ------------------------------------------------------------------------------------


async def _index_page(notices: list[Notice], form: Any = None, status: int = 200) -> Page:
    where = BillFilter.parse(request.args)
    found = await list_bills(runtime().engine, where, request.args.get("after"))
    problems = [Notice("error", problem) for problem in where.problems]
    return (
        await render_template(
            "bills/index.html",
            notices=[*notices, *problems],
            bills=found.rows,
            where=where,
            statuses=STATUSES,
            next_page=url_for("bills.index", **where.query_args(), after=found.next)
            if found.next
            else None,
            first_page=url_for("bills.index", **where.query_args())
            if request.args.get("after")
            else None,
            form=form or {},
            client_id=new_client_id(),
            may_manage=_may(Permission.MANAGE_BILLS),
            max_capacity=MAX_CAPACITY_ON_CREATE,
            max_number=MAX_NUMBER_LENGTH,
        ),
        status,
    )


@blueprint.get("/bills")
@page(VIEWING)
async def index() -> Page:
    return await _index_page(flashed())


@blueprint.post("/bills")
@page(BILLING)
async def create() -> Page:
    form = await request.form
    result = await bills.create_bill(
        runtime().engine,
        acting(),
        form.get("client_id"),
        form.get("number"),
        form.get("capacity"),
        form.get("description", ""),
    )
    announce()
    said = notice(result)
    bill_id = await bill_id_for(runtime().engine, str(form.get("number", ""))) if said.ok else None
    if bill_id is None:
        return await _index_page([said], form, 400)
    await flash(said.message, said.kind)
    return redirect(url_for("bills.view", bill_id=bill_id), 303)


# One bill ------------------------------------------------------------------------------------


async def _bill_or_404(bill_id: int) -> BillView:
    found = await find_bill(runtime().engine, bill_id)
    if found is None:
        await not_found("That bill does not exist (it may have been deleted): see the bill list.")
    return found


def _context(found: BillView) -> dict[str, Any]:
    return {
        "found": found,
        "bill": found.bill,
        "totals": found.totals,
        "max_children": MAX_CHILDREN,
        "may_manage": _may(Permission.MANAGE_BILLS),
        "may_delete": _may(Permission.DELETE_BILL),
        "new_client_id": new_client_id,
    }


async def _view_page(
    bill_id: int, notices: list[Notice], status: int = 200, form: Any = None
) -> Page:
    found = await _bill_or_404(bill_id)
    return (
        await render_template(
            "bills/view.html",
            notices=notices,
            form=form or {},
            max_capacity=MAX_CAPACITY,
            **_context(found),
        ),
        status,
    )


@blueprint.get("/bills/<int:bill_id>")
@page(VIEWING)
async def view(bill_id: int) -> Page:
    return await _view_page(bill_id, flashed())


@blueprint.get("/bills/<int:bill_id>/live")
@page(VIEWING)
async def live(bill_id: int) -> Page:
    """The part of the bill page that changes as parents are linked: refreshed by its script."""
    found = await _bill_or_404(bill_id)
    return await render_template("bills/_live.html", **_context(found))


@blueprint.get("/bills/<int:bill_id>/print")
@page(VIEWING)
async def print_view(bill_id: int) -> Page:
    found = await _bill_or_404(bill_id)
    return await render_template("bills/print.html", **_context(found))


# Changes -------------------------------------------------------------------------------------

Change = Callable[[Actor, object, str, Any], Awaitable[Result]]


async def _change(bill_id: int, change: Change, form_on_error: bool = False) -> Page:
    found = await _bill_or_404(bill_id)
    form = await request.form
    result = await change(acting(), form.get("client_id"), found.bill.number, form)
    announce()
    said = notice(result)
    if wants_json():
        return jsonify(
            outcome=str(result.outcome),
            message=said.message,
            error=result.error,
            bill=result.data.get("bill"),
        )
    if not said.ok:
        return await _view_page(bill_id, [said], 400, form if form_on_error else None)
    await flash(said.message, said.kind)
    return redirect(url_for("bills.view", bill_id=bill_id), 303)


def _engine() -> Any:
    return runtime().engine


@blueprint.post("/bills/<int:bill_id>/edit")
@page(BILLING)
async def edit(bill_id: int) -> Page:
    async def change(actor: Actor, client_id: object, number: str, form: Any) -> Result:
        return await bills.edit_bill(
            _engine(),
            actor,
            client_id,
            number,
            capacity=form.get("capacity") or None,
            description=form.get("description"),
        )

    return await _change(bill_id, change, form_on_error=True)


@blueprint.post("/bills/<int:bill_id>/parents")
@page(BILLING)
async def link_parent(bill_id: int) -> Page:
    async def change(actor: Actor, client_id: object, number: str, form: Any) -> Result:
        return await bills.link_bill_parent(_engine(), actor, client_id, number, form.get("code"))

    return await _change(bill_id, change)


@blueprint.post("/bills/<int:bill_id>/parents/remove")
@page(BILLING)
async def remove_parent(bill_id: int) -> Page:
    async def change(actor: Actor, client_id: object, number: str, form: Any) -> Result:
        return await bills.remove_bill_parent(_engine(), actor, client_id, number, form.get("code"))

    return await _change(bill_id, change)


@blueprint.post("/bills/<int:bill_id>/complete")
@page(BILLING)
async def complete(bill_id: int) -> Page:
    async def change(actor: Actor, client_id: object, number: str, _form: Any) -> Result:
        return await bills.complete_bill(_engine(), actor, client_id, number)

    return await _change(bill_id, change)


@blueprint.post("/bills/<int:bill_id>/reopen")
@page(BILLING)
async def reopen(bill_id: int) -> Page:
    async def change(actor: Actor, client_id: object, number: str, _form: Any) -> Result:
        return await bills.reopen_bill(_engine(), actor, client_id, number)

    return await _change(bill_id, change)


@blueprint.post("/bills/<int:bill_id>/delete")
@page(ADMIN)
async def delete(bill_id: int) -> Page:
    found = await _bill_or_404(bill_id)
    form = await request.form
    number = found.bill.number
    if str(form.get("confirm", "")).strip().lower() != number.lower():
        message = f"Type the bill number {number} to confirm the deletion, then press Delete."
        return await _view_page(bill_id, [Notice("error", message)], 400)
    result = await bills.delete_bill(runtime().engine, acting(), form.get("client_id"), number)
    announce()
    said = notice(result)
    if not said.ok:
        return await _view_page(bill_id, [said], 400)
    await flash(said.message, said.kind)
    return redirect(url_for("bills.index"), 303)
