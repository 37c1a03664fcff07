"""Who may watch the live views: people whose role allows it, or a wall display's link.

A display link (SPEC §4) is a session without a person: ``/display/<token>`` puts the link's
id in the session, and every use re-checks it, so a revoked link stops working at once. It
sees only its areas (none listed: all of them) and can change nothing.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from quart import g, session

from traitortrack.domain.roles import Role
from traitortrack.runtime import runtime
from traitortrack.services.people import display_link_access
from traitortrack.web.access import Kind, account, api, page

WALL = frozenset({Role.ADMIN, Role.SUPERVISOR})

Audience = frozenset[str] | None  # areas a viewer may see; None: all of them


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is watching: ``role`` is None for a display link."""

    role: Role | None
    audience: Audience
    label: str


def viewer() -> Viewer:
    found: Viewer = g.viewer
    return found


async def _display() -> Viewer | None:
    link_id = session.get("display_link")
    if not isinstance(link_id, int):
        return None
    access = await display_link_access(runtime().engine, link_id)
    if access is None:
        session.pop("display_link", None)
        return None
    return Viewer(None, access.audience, access.label)


def watching(kind: Kind, roles: frozenset[Role]) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Like ``page``/``api``, but a display link may watch too (as ``viewer()``)."""

    def decorator(view: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @wraps(view)
        async def as_person(*args: Any, **kwargs: Any) -> Any:
            who = account()
            assert who is not None
            g.viewer = Viewer(who.role, who.audience, who.username)
            return await view(*args, **kwargs)

        for_people = (page if kind == "page" else api)(roles)(as_person)

        @wraps(view)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if account() is None and (display := await _display()) is not None:
                g.viewer = display
                return await view(*args, **kwargs)
            return await for_people(*args, **kwargs)

        guarded.access = for_people.access  # type: ignore[attr-defined]
        return guarded

    return decorator
