"""Signing in and out, the second factor, and one's own account security (SPEC §5, §8)."""

from datetime import timedelta

from quart import Blueprint, Response, g, redirect, render_template, request, session, url_for

from traitortrack.domain.roles import Role
from traitortrack.runtime import runtime
from traitortrack.security import new_totp_secret, same_site_path, totp_qr_svg, totp_uri
from traitortrack.services import accounts
from traitortrack.web.access import STAFF, account, api, page, public
from traitortrack.web.hooks import begin_session, end_session, origin
from traitortrack.web.limits import protected

blueprint = Blueprint("auth", __name__)

PENDING_2FA_FOR = timedelta(minutes=5)
Page = str | Response | tuple[str, int]


def _next_url() -> str:
    """Only same-site paths: a crafted ?next= must not send people to another site."""
    return same_site_path(request.args.get("next", "")) or url_for("dashboard.home")


async def _login_page(message: str | None = None, status: int = 200) -> tuple[str, int]:
    notice = message or g.get("signed_out")
    return await render_template("auth/login.html", message=notice, next=_next_url()), status


@blueprint.get("/login")
@public
async def login() -> Page:
    if account() is not None:
        return redirect(_next_url())
    return await _login_page()


@blueprint.post("/login")
@protected
@public
async def login_submit() -> Page:
    form = await request.form
    state = runtime()
    result = await accounts.authenticate(
        state.engine, form.get("username"), form.get("password"), state.clock(), origin()
    )
    if result.account is None:
        return await _login_page(result.message, 401)
    if result.needs_totp:
        session["pending_2fa"] = {"uid": result.account.id, "at": state.clock().timestamp()}
        return redirect(url_for("auth.totp", next=_next_url()))
    await begin_session(result.account)
    return redirect(_next_url())


def _pending_user() -> int | None:
    pending = session.get("pending_2fa")
    if not pending:
        return None
    if runtime().clock().timestamp() - pending["at"] > PENDING_2FA_FOR.total_seconds():
        session.pop("pending_2fa", None)
        return None
    return int(pending["uid"])


@blueprint.get("/login/totp")
@public
async def totp() -> Page:
    if _pending_user() is None:
        return redirect(url_for("auth.login"))
    return await render_template("auth/totp.html", message=None, next=_next_url())


@blueprint.post("/login/totp")
@protected
@public
async def totp_submit() -> Page:
    user_id = _pending_user()
    if user_id is None:
        return await _login_page("Your sign-in took too long. Enter your password again.", 401)
    state = runtime()
    code = (await request.form).get("totp")
    if not await accounts.verify_second_factor(
        state.engine, user_id, code, state.clock(), origin()
    ):
        message = (
            "That code is not valid or was already used. Enter the current code. After 5 "
            "wrong codes, codes are refused for 15 minutes."
        )
        return await render_template("auth/totp.html", message=message, next=_next_url()), 401
    who = await accounts.load_account_by_id(state.engine, user_id)
    if who is None:
        return await _login_page("This account is no longer active.", 401)
    await begin_session(who)
    return redirect(_next_url())


@blueprint.post("/logout")
@public
async def logout() -> Response:
    await end_session()
    return redirect(url_for("auth.login"))


async def _security_page(
    message: str | None = None, status: int = 200, **extra: object
) -> tuple[str, int]:
    who = account()
    assert who is not None
    return (
        await render_template(
            "auth/account.html", message=message, is_admin=who.role == Role.ADMIN, **extra
        ),
        status,
    )


@blueprint.get("/account")
@page(STAFF)
async def account_page() -> Page:
    return await _security_page()


@blueprint.post("/account/password")
@protected
@page(STAFF)
async def change_password() -> Page:
    who = account()
    assert who is not None
    form = await request.form
    if form.get("new_password") != form.get("repeat_password"):
        return await _security_page("The new passwords differ; nothing was changed.", 400)
    state = runtime()
    ok, message = await accounts.change_password(
        state.engine, who.id, form.get("current_password"), form.get("new_password"), origin()
    )
    if ok:
        # The change ended every session of the account, this one included: start a new one.
        renewed = await accounts.load_account_by_id(state.engine, who.id)
        if renewed is not None:
            await begin_session(renewed)
    return await _security_page(message, 200 if ok else 400)


@blueprint.post("/account/2fa/start")
@protected
@page(frozenset({Role.ADMIN}))
async def totp_start() -> Page:
    who = account()
    assert who is not None
    if who.totp_enabled:
        return await _security_page("Two-factor sign-in is already on.", 400)
    secret = new_totp_secret()
    await accounts.start_totp_enrolment(runtime().engine, who.id, secret)
    uri = totp_uri(secret, who.username)
    return await _security_page(None, enrolling=True, qr_svg=totp_qr_svg(uri), secret=secret)


@blueprint.post("/account/2fa/confirm")
@protected
@page(frozenset({Role.ADMIN}))
async def totp_confirm() -> Page:
    who = account()
    assert who is not None
    state = runtime()
    codes = await accounts.confirm_totp(
        state.engine, who.id, (await request.form).get("totp"), state.clock(), origin()
    )
    if codes is None:
        return await _security_page(
            "That code did not match. Start again and enter the code your app shows.", 400
        )
    renewed = await accounts.load_account_by_id(state.engine, who.id)
    g.account = renewed
    return await _security_page("Two-factor sign-in is on.", recovery_codes=codes)


@blueprint.post("/account/2fa/disable")
@protected
@page(frozenset({Role.ADMIN}))
async def totp_disable() -> Page:
    who = account()
    assert who is not None
    state = runtime()
    password = (await request.form).get("password")
    if not await accounts.disable_totp(state.engine, who.id, password, origin()):
        return await _security_page("Wrong password; two-factor sign-in stays on.", 400)
    g.account = await accounts.load_account_by_id(state.engine, who.id)
    return await _security_page("Two-factor sign-in is off.")


@blueprint.get("/api/v1/session")
@api(STAFF)
async def session_info() -> dict[str, object]:
    """Who is signed in and when the session ends. Asking does not extend it (live pages ask
    on their own); ``POST`` does."""
    return _session_json()


@blueprint.post("/api/v1/session")
@api(STAFF)
async def keep_session() -> dict[str, object]:
    """ "Stay signed in": counts as activity, like any other request a person makes."""
    return _session_json()


def _session_json() -> dict[str, object]:
    who = account()
    assert who is not None
    return {
        "username": who.username,
        "role": who.role.value,
        "area": who.area,
        "deadline": who.deadline,
    }
