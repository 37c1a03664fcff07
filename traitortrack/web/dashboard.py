"""The start page, and the wall display for the dispatch floor's TV (SPEC §4)."""

from quart import Blueprint, render_template

from traitortrack.version import VERSION
from traitortrack.web.access import STAFF, page
from traitortrack.web.viewers import WALL, viewer, watching

blueprint = Blueprint("dashboard", __name__)


@blueprint.get("/")
@page(STAFF)
async def home() -> str:
    return await render_template("dashboard/home.html")


@blueprint.get("/wall")
@watching("page", WALL)
async def wall() -> str:
    """A big dark screen across the room: live counters per area, scans per minute, the latest
    scans. Everything after the first paint comes over ``/ws?view=wall``."""
    return await render_template("dashboard/wall.html", viewer=viewer(), version=VERSION)
