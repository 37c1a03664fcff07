"""Bags (SPEC §7, §4): search with filters, one bag with its children and scan history, and the
admin's guarded delete. Dispatchers see only their own dispatch area, whatever they ask for.
"""

from typing import Any

from quart import (
    Blueprint,
    Response,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)

from traitortrack.domain.linking import MAX_CHILDREN
from traitortrack.domain.roles import Permission, Role, can
from traitortrack.runtime import runtime
from traitortrack.services.bag_queries import KINDS, BagFilter, find_bag, search_bags
from traitortrack.services.bags import delete_bag
from traitortrack.services.people import list_areas
from traitortrack.web.access import ADMIN, STAFF, VIEWING, account, page
from traitortrack.web.forms import (
    Notice,
    acting,
    announce,
    flashed,
    new_client_id,
    not_found,
    notice,
)

blueprint = Blueprint("bags", __name__)

Page = str | Response | tuple[str, int]


def own_area() -> str | None:
    """The one area this person may see, or None for all of them (SPEC §4)."""
    who = account()
    assert who is not None
    return who.area if who.role == Role.DISPATCHER else None


def _sees_bills() -> bool:
    who = account()
    return who is not None and who.role in VIEWING


@blueprint.get("/bags")
@page(STAFF)
async def search() -> Page:
    engine = runtime().engine
    limited_to = own_area()
    where = BagFilter.parse(request.args).within(limited_to)
    after = request.args.get("after")
    found = await search_bags(engine, where, after)
    notices = flashed()
    notices += [Notice("error", problem) for problem in where.problems]
    query = where.query_args()
    return await render_template(
        "bags/search.html",
        notices=notices,
        bags=found.rows,
        where=where,
        kinds=KINDS,
        areas=[] if limited_to else await list_areas(engine),
        limited_to=limited_to,
        next_page=url_for("bags.search", **query, after=found.next) if found.next else None,
        first_page=url_for("bags.search", **query) if after else None,
        export_args=query,
        sees_bills=_sees_bills(),
        max_children=MAX_CHILDREN,
    )


async def _detail_page(code: str, notices: list[Notice], status: int = 200) -> tuple[str, int]:
    limited_to = own_area()
    found = await find_bag(runtime().engine, code, limited_to)
    if found is None:
        where = f" in your area ({limited_to})" if limited_to else ""
        await not_found(
            f"There is no bag {code.strip().upper()}{where}. Check the code, or search by its "
            "first characters on the Bags page."
        )
    who = account()
    assert who is not None
    return (
        await render_template(
            "bags/detail.html",
            notices=notices,
            found=found,
            bag=found.bag,
            sees_bills=_sees_bills(),
            may_delete=can(who.role, Permission.DELETE_BAG),
            client_id=new_client_id(),
            max_children=MAX_CHILDREN,
        ),
        status,
    )


@blueprint.get("/bags/<code>")
@page(STAFF)
async def detail(code: str) -> Page:
    return await _detail_page(code, flashed())


@blueprint.post("/bags/<code>/delete")
@page(ADMIN)
async def delete(code: str) -> Page:
    form: Any = await request.form
    result = await delete_bag(runtime().engine, acting(), form.get("client_id"), code)
    announce()
    said = notice(result)
    if not said.ok:
        if result.error == "BAG_NOT_FOUND":
            await not_found(f"{result.message}. It may have been deleted already: search again.")
        return await _detail_page(code, [said], 400)
    await flash(said.message, said.kind)
    return redirect(url_for("bags.search"), 303)
