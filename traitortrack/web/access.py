"""Who may reach which view. Every view declares it; the authorisation matrix test reads it.

A view is ``public``, a ``page`` (anonymous → redirect to login, wrong role → 403 page) or an
``api`` endpoint (anonymous → 401 JSON, wrong role → 403 JSON).
"""

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Literal, ParamSpec, TypeVar

from quart import g, jsonify, redirect, render_template, request, url_for

from traitortrack.domain.roles import Role
from traitortrack.services.accounts import Account

P = ParamSpec("P")
R = TypeVar("R")
Kind = Literal["public", "page", "api"]

ALL_ROLES = frozenset(Role)
STAFF = ALL_ROLES  # anyone signed in
ADMIN = frozenset({Role.ADMIN})
BILLING = frozenset({Role.ADMIN, Role.BILLER})
SCANNING = frozenset({Role.ADMIN, Role.DISPATCHER})
VIEWING = frozenset({Role.ADMIN, Role.BILLER, Role.SUPERVISOR})


def account() -> Account | None:
    return g.get("account")


def _declare(view: Callable[..., Any], kind: Kind, roles: frozenset[Role]) -> None:
    view.access = (kind, roles)  # type: ignore[attr-defined]


def public(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    _declare(view, "public", frozenset())
    return view


def _guard(kind: Kind, roles: frozenset[Role]) -> Callable[[Callable[P, Awaitable[Any]]], Any]:
    def decorator(view: Callable[P, Awaitable[Any]]) -> Callable[P, Awaitable[Any]]:
        @wraps(view)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            who = account()
            if who is None:
                if kind == "api":
                    return jsonify(error="Sign in first (POST /login), then retry."), 401
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if who.role not in roles:
                message = "Your role does not allow this. Ask an admin if you need it."
                if kind == "api":
                    return jsonify(error=message), 403
                return await render_template("errors/error.html", code=403, message=message), 403
            return await view(*args, **kwargs)

        _declare(guarded, kind, roles)
        return guarded

    return decorator


def page(roles: frozenset[Role]) -> Callable[[Callable[P, Awaitable[Any]]], Any]:
    return _guard("page", roles)


def api(roles: frozenset[Role]) -> Callable[[Callable[P, Awaitable[Any]]], Any]:
    return _guard("api", roles)
