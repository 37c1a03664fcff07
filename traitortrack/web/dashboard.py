"""The start page: what each role can do from here."""

from quart import Blueprint, render_template

from traitortrack.web.access import STAFF, page

blueprint = Blueprint("dashboard", __name__)


@blueprint.get("/")
@page(STAFF)
async def home() -> str:
    return await render_template("dashboard/home.html")
