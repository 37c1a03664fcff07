"""Administration pages: users, dispatch areas, wall-display links, the audit log (SPEC §4, §5).

Thin views: parse the form, call :mod:`traitortrack.services.people`, re-render the page with
its message. Most paths live under ``/admin``; the blueprint has no ``url_prefix`` because the
public ``/display/<token>`` entry for wall screens belongs here too.
"""

from typing import Any

from quart import Blueprint, Response, redirect, render_template, request, session, url_for

from traitortrack.domain.roles import MAX_DISPATCHERS_PER_AREA, Role
from traitortrack.runtime import runtime
from traitortrack.services import people
from traitortrack.services.accounts import load_account_by_id
from traitortrack.services.commands import Actor
from traitortrack.services.people import AuditFilter, Done
from traitortrack.web.access import ADMIN, account, page, public
from traitortrack.web.hooks import begin_session, origin
from traitortrack.web.limits import protected

blueprint = Blueprint("admin", __name__)

Page = str | Response | tuple[str, int]
ROLES = tuple(role.value for role in Role)


def _actor() -> Actor:
    who = account()
    assert who is not None
    where = origin()
    return Actor(who.id, who.username, who.role, who.area, where.request_id, where.ip)


def _status(done: Done | None) -> int:
    if done is None or done.ok:
        return 200
    return 404 if done.error == "NOT_FOUND" else 400


async def _render(template: str, done: Done | None = None, **context: Any) -> tuple[str, int]:
    return (
        await render_template(
            f"admin/{template}",
            done=done,
            roles=ROLES,
            max_dispatchers=MAX_DISPATCHERS_PER_AREA,
            **context,
        ),
        _status(done),
    )


# Users ----------------------------------------------------------------------------------------


async def _users_page(done: Done | None = None, form: Any = None) -> tuple[str, int]:
    engine = runtime().engine
    return await _render(
        "users.html",
        done,
        users=await people.list_users(engine),
        areas=await people.list_areas(engine),
        form=form if form is not None and done is not None and not done.ok else {},
    )


async def _user_page(user_id: int, done: Done | None = None) -> tuple[str, int]:
    engine = runtime().engine
    person = await people.find_user(engine, user_id)
    if person is None:
        return await _users_page(done or Done(False, "That user does not exist.", "NOT_FOUND"))
    return await _render(
        "user.html",
        done,
        person=person,
        areas=await people.list_areas(engine),
        is_self=person.id == _actor().user_id,
    )


@blueprint.get("/admin/users")
@page(ADMIN)
async def users() -> Page:
    return await _users_page()


@blueprint.post("/admin/users")
@page(ADMIN)
async def create_user() -> Page:
    form = await request.form
    done = await people.create_person(
        runtime().engine,
        _actor(),
        form.get("username"),
        form.get("role"),
        form.get("area"),
        form.get("password"),
    )
    return await _users_page(done, form)


@blueprint.get("/admin/users/<int:user_id>")
@page(ADMIN)
async def user(user_id: int) -> Page:
    return await _user_page(user_id)


@blueprint.post("/admin/users/<int:user_id>")
@page(ADMIN)
async def update_user(user_id: int) -> Page:
    form = await request.form
    done = await people.update_person(
        runtime().engine, _actor(), user_id, form.get("role"), form.get("area")
    )
    return await _user_page(user_id, done)


@blueprint.post("/admin/users/<int:user_id>/deactivate")
@page(ADMIN)
async def deactivate_user(user_id: int) -> Page:
    done = await people.set_active(runtime().engine, _actor(), user_id, active=False)
    return await _user_page(user_id, done)


@blueprint.post("/admin/users/<int:user_id>/reactivate")
@page(ADMIN)
async def reactivate_user(user_id: int) -> Page:
    done = await people.set_active(runtime().engine, _actor(), user_id, active=True)
    return await _user_page(user_id, done)


@blueprint.post("/admin/users/<int:user_id>/password")
@protected
@page(ADMIN)
async def reset_password(user_id: int) -> Page:
    done = await people.reset_password(runtime().engine, _actor(), user_id)
    return await _user_page(user_id, done)


@blueprint.post("/admin/users/<int:user_id>/sessions")
@page(ADMIN)
async def revoke_sessions(user_id: int) -> Page:
    actor = _actor()
    done = await people.revoke_sessions(runtime().engine, actor, user_id)
    if done.ok and user_id == actor.user_id:
        # Revoking one's own sessions signs out the other devices; this one starts afresh.
        renewed = await load_account_by_id(runtime().engine, user_id)
        if renewed is not None:
            await begin_session(renewed)
    return await _user_page(user_id, done)


@blueprint.post("/admin/users/<int:user_id>/delete")
@page(ADMIN)
async def delete_user(user_id: int) -> Page:
    engine = runtime().engine
    person = await people.find_user(engine, user_id)
    confirm = str((await request.form).get("confirm", "")).strip()
    if person is not None and confirm != person.username:
        message = f"Type the username {person.username} to confirm the deletion."
        return await _user_page(user_id, Done(False, message, "NOT_CONFIRMED"))
    done = await people.delete_person(engine, _actor(), user_id)
    if not done.ok:
        return await _user_page(user_id, done)
    return await _users_page(done)


# Dispatch areas -------------------------------------------------------------------------------


async def _areas_page(done: Done | None = None) -> tuple[str, int]:
    return await _render("areas.html", done, areas=await people.list_areas(runtime().engine))


@blueprint.get("/admin/areas")
@page(ADMIN)
async def areas() -> Page:
    return await _areas_page()


@blueprint.post("/admin/areas")
@page(ADMIN)
async def add_area() -> Page:
    form = await request.form
    done = await people.add_area(runtime().engine, _actor(), form.get("name"), form.get("label"))
    return await _areas_page(done)


# Wall-display links ---------------------------------------------------------------------------


async def _displays_page(done: Done | None = None) -> tuple[str, int]:
    engine = runtime().engine
    link = (
        url_for("admin.open_display", token=done.token, _external=True)
        if done is not None and done.token
        else None
    )
    return await _render(
        "displays.html",
        done,
        link=link,
        links=await people.list_display_links(engine),
        areas=await people.list_areas(engine),
    )


@blueprint.get("/admin/displays")
@page(ADMIN)
async def displays() -> Page:
    return await _displays_page()


@blueprint.post("/admin/displays")
@page(ADMIN)
async def create_display() -> Page:
    form = await request.form
    done = await people.create_display_link(
        runtime().engine, _actor(), form.get("label"), form.getlist("areas")
    )
    return await _displays_page(done)


@blueprint.post("/admin/displays/<int:link_id>/revoke")
@page(ADMIN)
async def revoke_display(link_id: int) -> Page:
    done = await people.revoke_display_link(runtime().engine, _actor(), link_id)
    return await _displays_page(done)


@blueprint.get("/display/<token>")
@public
async def open_display(token: str) -> Page:
    where = origin()
    access = await people.open_display_link(runtime().engine, token, where.request_id, where.ip)
    if access is None:
        message = "This display link is not valid or has been revoked. Ask an admin for a new one."
        return await render_template("errors/error.html", code=404, message=message), 404
    session["display_link"] = access.link_id
    session.permanent = True
    return redirect("/wall")


# Audit log ------------------------------------------------------------------------------------


@blueprint.get("/admin/audit")
@page(ADMIN)
async def audit() -> Page:
    where = AuditFilter.parse(request.args)
    before_arg = request.args.get("before", "")
    before = int(before_arg) if before_arg.isdigit() and len(before_arg) < 19 else None
    found = await people.search_audit(runtime().engine, where, before)
    older = (
        url_for("admin.audit", **where.query_args(), before=found.older)
        if found.older is not None
        else None
    )
    problem = " ".join(where.problems) or None
    return await _render(
        "audit.html",
        Done(False, problem, "INVALID_FILTER") if problem else None,
        entries=found.entries,
        where=where,
        older=older,
        newest=url_for("admin.audit", **where.query_args()) if before is not None else None,
    )
