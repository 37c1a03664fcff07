"""Helpers for driving the app like a browser: sign in through the real form."""

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from traitortrack import create_app
from traitortrack.config import Settings

ADMIN_PASSWORD = "Admin-pass1"
_CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


def app_for(settings: Settings, **changes: Any) -> Quart:
    return create_app(replace(settings, admin_password=ADMIN_PASSWORD, **changes))


@contextmanager
def app_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """``caplog`` sees what the app logs (``create_app`` replaces the root logger's handlers)."""
    root = logging.getLogger()
    root.addHandler(caplog.handler)
    try:
        yield
    finally:
        root.removeHandler(caplog.handler)


async def csrf_from(client: QuartClient, path: str = "/login") -> str:
    response = await client.get(path)
    match = _CSRF.search(await response.get_data(as_text=True))
    assert match, f"no csrf meta tag on {path}"
    return match.group(1)


async def sign_in(
    client: QuartClient,
    username: str,
    password: str,
    address: str = "127.0.0.1",
    path: str = "/login",
) -> Any:
    """Post the login form as a browser at ``address`` would."""
    token = await csrf_from(client)
    return await client.post(
        path,
        form={"username": username, "password": password, "csrf_token": token},
        scope_base={"client": (address, 50000)},
    )


def alert_text(html: str) -> str:
    """The first error banner on a page."""
    match = re.search(r'class="banner error" role="alert">([^<]+)<', html)
    return match.group(1).strip() if match else ""


class Clock:
    """A wall clock that tests move by hand (``runtime(app).clock = Clock()``)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
