"""What happens around every request: request id, who is signed in, session expiry, CSRF,
security headers, friendly errors."""

import logging
import re
import uuid

from quart import (
    Quart,
    Response,
    current_app,
    g,
    has_websocket_context,
    jsonify,
    render_template,
    request,
    session,
    url_for,
)
from quart_auth import AuthUser, current_user, login_user, logout_user
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from traitortrack.db.engine import is_unavailable
from traitortrack.logs import bind_request_id
from traitortrack.runtime import runtime
from traitortrack.security import (
    anonymize_ip,
    client_key,
    new_token,
    security_headers,
    tokens_match,
)
from traitortrack.services import accounts
from traitortrack.services.accounts import Account, Origin
from traitortrack.services.commands import NotSaved
from traitortrack.web.inputs import FORM_TYPES, WRITES, check_request

log = logging.getLogger(__name__)

CAMERA_ENDPOINTS = frozenset({"scan.scanner"})
# What a page fetches on its own (live refreshes, a wall's snapshot, the health history, the
# live connection's "still signed in?" probe): not a sign that the person is still there.
PASSIVE_ENDPOINTS = frozenset(
    {
        "static",
        "bills.live",
        "api.stats",
        "monitoring.system_health_history",
        "auth.session_info",
    }
)
RETRY_AFTER_S = 5
UNAVAILABLE_MESSAGE = "The database is not answering right now; nothing was saved. Try again."
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
CSRF_MESSAGE = (
    "This form has expired or did not come from this site, so nothing was changed. "
    "Reload the page and try again."
)


def csrf_token() -> str:
    token = session.get("csrf")
    if token is None:
        token = session["csrf"] = new_token()
    return token


def origin() -> Origin:
    address = request.remote_addr
    secret = runtime().settings.session_secret
    return Origin(g.get("request_id"), anonymize_ip(address), client_key(address, secret))


async def begin_session(who: Account) -> None:
    """Sign in with a fresh server-side session (and a new CSRF token: no fixation from before
    sign-in)."""
    state = runtime()
    auth_id = await accounts.start_session(state.engine, who, state.clock())
    session.clear()
    session.update(csrf=new_token())
    session.permanent = True
    login_user(AuthUser(auth_id))


def forget_session() -> None:
    """Drop the cookies (the server-side session is gone already, or never was)."""
    session.clear()
    logout_user()


async def end_session() -> None:
    """Sign out: the server-side session ends (the cookie is worth nothing even if replayed)
    and every socket opened with it closes."""
    who = g.get("account")
    if who is not None:
        await accounts.end_session(runtime().engine, who, origin())
        runtime().live.bus.kick()
    forget_session()


async def _load_account() -> None:
    auth_id = current_user.auth_id
    if auth_id is None:
        return
    state = runtime()
    who = await accounts.load_account(state.engine, auth_id)
    now = state.clock()
    if who is None or now.timestamp() > who.deadline:
        forget_session()
        g.signed_out = "Your session ended. Sign in again." if who is not None else None
        return
    if request.endpoint not in PASSIVE_ENDPOINTS:
        who = await accounts.session_seen(state.engine, who, now)
    g.account = who


def _answers_in_json() -> bool:
    """Refusals of API calls and of JSON requests are JSON; of anything else, a page."""
    return (
        request.path.startswith("/api/")
        or request.is_json
        or request.accept_mimetypes.best == "application/json"
    )


def _csrf_ok() -> bool:
    given = request.headers.get("X-CSRF-Token")
    return tokens_match(session.get("csrf"), given)


async def _before_request() -> Response | tuple[Response, int] | tuple[str, int] | None:
    # Always ours: an id the client chose could be anyone's, and the audit log records this one.
    g.request_id = uuid.uuid4().hex
    given_id = request.headers.get("X-Request-ID", "")
    bind_request_id(g.request_id, given_id if _REQUEST_ID.fullmatch(given_id) else None)
    if request.routing_exception is not None or request.endpoint in {
        "static",
        "health.health",
        "health.ready",
    }:
        return None  # 404/405 answer on their own; nothing here can change state
    await _load_account()  # first: a refused request's page still shows whose it is
    await check_request()
    if request.method in WRITES and not _csrf_ok():
        form_token = (
            (await request.form).get("csrf_token") if request.mimetype in FORM_TYPES else None
        )
        if not tokens_match(session.get("csrf"), form_token):
            log.warning("csrf rejected", extra={"endpoint": request.endpoint})
            if _answers_in_json():
                return jsonify(error=CSRF_MESSAGE), 403
            return await render_template("errors/error.html", code=403, message=CSRF_MESSAGE), 403
    return None


async def _after_request(response: Response) -> Response:
    production = runtime().settings.is_production
    camera = request.endpoint in CAMERA_ENDPOINTS
    for name, value in security_headers(production, camera).items():
        response.headers.setdefault(name, value)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    if g.get("account") is not None:
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _http_error(error: HTTPException) -> Response | tuple[Response | str, int]:
    code = error.code or 500
    message = {
        404: "There is nothing here. Check the address, or go back to the start page.",
        405: "That action is not available here.",
        413: "That request is too large; nothing was saved.",
        429: "Too many attempts. Wait a moment before trying again.",
    }.get(code, error.description or "Something went wrong.")
    if code == 429 and (retry := error.get_headers()):
        seconds = dict(retry).get("Retry-After")
        if seconds:
            message = f"Too many attempts. Try again in {seconds} seconds."
    if _answers_in_json():
        response = jsonify(error=message)
    else:
        response = Response(await render_template("errors/error.html", code=code, message=message))
    response.status_code = code
    for name, value in error.get_headers():
        if name.lower() == "retry-after":
            response.headers[name] = value
    return response


async def _server_error(error: Exception) -> Response | tuple[Response | str, int]:
    if isinstance(error, NotSaved) or is_unavailable(error):
        return await _unavailable(error)
    log.exception("unhandled error", extra={"request_id": g.get("request_id")})
    message = (
        "Something went wrong on our side and nothing was saved. Try again; if it keeps "
        f"happening, tell an admin this reference: {g.get('request_id', '-')}."
    )
    return await render_template("errors/error.html", code=500, message=message), 500


async def _unavailable(error: Exception) -> Response | tuple[Response | str, int]:
    """The database is down or restarting: 503 with Retry-After, for pages, the API and
    websocket handshakes alike (expected while it lasts, so no traceback)."""
    log.warning("database unavailable", extra={"error": repr(error)})
    if has_websocket_context():
        return Response(UNAVAILABLE_MESSAGE, 503, {"Retry-After": str(RETRY_AFTER_S)})
    return await _http_error(ServiceUnavailable(UNAVAILABLE_MESSAGE, retry_after=RETRY_AFTER_S))


# Navigation, in order; an entry shows only once its page exists and the role may open it.
NAVIGATION = (
    ("Scan", "scan.scanner"),
    ("Bills", "bills.index"),
    ("Bags", "bags.search"),
    ("Wall", "dashboard.wall"),
    ("Health", "monitoring.system_health"),
    ("Users", "admin.users"),
    ("Audit", "admin.audit"),
    ("Account", "auth.account_page"),
)


def nav_items() -> list[tuple[str, str]]:
    who = g.get("account")
    if who is None:
        return []
    items = []
    for label, endpoint in NAVIGATION:
        view = current_app.view_functions.get(endpoint)
        if view is not None and who.role in getattr(view, "access", ("", frozenset()))[1]:
            items.append((label, url_for(endpoint)))
    return items


def install(app: Quart) -> None:
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _server_error)

    @app.context_processor
    async def template_globals() -> dict[str, object]:
        who = g.get("account")
        return {
            "account": who,
            "csrf_token": csrf_token,
            "nav_items": nav_items,
            "session_deadline": who.deadline if who else None,
        }
