"""Browser tests: the app served by a real Hypercorn process, driven by Debian's Chromium
through Playwright (``playwright install`` cannot download browsers here).

Playwright's sync API cannot run inside a running event loop, so browser tests are plain
(sync) test functions; the server is a subprocess.
"""

import asyncio
import contextlib
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.live_cluster import AppServer
from traitortrack.config import Settings
from traitortrack.db.engine import create_engine

ADMIN_PASSWORD = "Browser-pass1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PHONE = {"width": 412, "height": 860}
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def server_env(settings: Settings, directory: Path, **extra: str) -> dict[str, str]:
    """The environment of an app process on the test's database (no Redis unless given)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TRAITORTRACK_", "REDIS_", "PRODUCTION_", "REPLIT_"))
        and key not in {"WEB_CONCURRENCY", "DATABASE_URL", "ADMIN_PASSWORD", "SESSION_SECRET"}
    }
    assert settings.database_url is not None
    return env | {
        "DATABASE_URL": settings.database_url,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SESSION_SECRET": "browser-test-secret-" + "z" * 40,
        "TRAITORTRACK_DATA_DIR": str(directory / "data"),
        "DB_POOL_SIZE": "10",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@contextlib.contextmanager
def app_server(settings: Settings, directory: Path, **extra: str) -> Iterator[AppServer]:
    """An app process on the test's database, ready, stopped afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    server = AppServer("web", server_env(settings, directory, **extra), directory / "server.log")
    server.start()
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop(grace_s=2)


@pytest.fixture
def web_server(settings: Settings, tmp_path: Path) -> Iterator[AppServer]:
    with app_server(settings, tmp_path) as server:
        yield server


def _wait_ready(server: AppServer, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            raise RuntimeError(f"the app exited:\n{server.log_tail()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.base}/ready", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the app was not ready within {seconds} s:\n{server.log_tail()}")


@pytest.fixture
def browser(web_server: AppServer) -> Iterator[object]:
    # Set up after the server (and so after every async fixture): Playwright's sync API keeps
    # an event loop running in this thread, and pytest-asyncio cannot start one inside it.
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("NO CHROMIUM: install Debian's chromium (scripts/test.sh does, as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def sign_in(page, base: str, username: str, password: str) -> None:
    """Sign in through the real form, as a person would."""
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)


def screenshot(page, name: str) -> Path:
    """Keep a picture of the page for a person to look at (test-artifacts/, not committed)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def in_another_loop(settings: Settings, work: Any) -> Any:
    """Run ``work(engine)`` on an event loop of its own: Playwright's sync API keeps this
    thread's loop busy (and it is how another person's device would act, too)."""

    async def run() -> Any:
        engine = create_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def query(settings: Settings, sql: str, *args: Any) -> list[Any]:
    """Read the app's database from a sync test (asyncpg records; ``$1`` parameters)."""

    async def fetch(engine: Any) -> list[Any]:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            return await raw.fetch(sql, *args)

    return in_another_loop(settings, fetch)
