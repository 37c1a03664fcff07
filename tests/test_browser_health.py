"""Admins' live system health in a real browser: figures and charts that move on their own."""

import pytest

from tests.browser import ADMIN_PASSWORD, SCREENSHOTS, _wait_ready, server_env, sign_in
from tests.live_cluster import AppServer
from tests.test_browser_wall import Scanner, floor  # noqa: F401  (a fixture)

DESKTOP = {"width": 1600, "height": 1000}


@pytest.fixture
def sensitive_server(settings, tmp_path):
    """The app with a 1 ms slow-query threshold, so the slow-query table has rows to show."""
    server = AppServer(
        "health", server_env(settings, tmp_path, SLOW_QUERY_MS="1"), tmp_path / "server.log"
    )
    server.start()
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop(grace_s=2)


@pytest.mark.usefixtures("floor")
def test_an_admin_watches_the_system_breathe(settings, sensitive_server, browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
    base = sensitive_server.base
    scanner = Scanner(base, "ravi")
    scanner.scan("SB60001")
    for i in range(1, 11):
        scanner.scan(f"HKID{i:04d}", parent="SB60001")

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda r: r.status == 404 and errors.append(f"404 {r.url}"))
    try:
        sign_in(page, base, "admin", ADMIN_PASSWORD)
        page.goto(f"{base}/system_health")
        expect(page.locator(".health-status")).to_have_attribute("data-status", "live")
        expect(page.locator('[data-value="clients_total"]')).not_to_have_text("\u2013")
        expect(page.locator('[data-value="clients.by_role"]')).to_contain_text("admin 1")
        expect(page.locator('[data-value="bus.state"]')).to_have_text("Up")
        expect(page.locator('[data-value="pool.capacity"]')).to_have_text("20")  # 10 + 10 overflow
        expect(page.locator('[data-value="db.size"]')).to_contain_text("MB")
        expect(page.locator("[data-workers] tr")).to_have_count(1)
        expect(page.locator("[data-slow-queries] .shape").first).to_be_visible()

        # Live: more scans show up in the next frames without a reload.
        for i in range(11, 21):
            scanner.scan(f"HKID{i:04d}", parent="SB60001")
        expect(page.locator('[data-value="scans_last_minute"]')).to_have_text("21")
        expect(page.locator('[data-value="ack.p99"]')).to_contain_text("ms")
        updated = page.inner_text('[data-value="at"]')
        expect(page.locator('[data-value="at"]')).not_to_have_text(updated)
        page.wait_for_timeout(1_500)  # a few more points on the charts
        assert errors == [], errors
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "system-health.png"), full_page=True)
        page.screenshot(path=str(SCREENSHOTS / "system-health-screen.png"))  # what is in view
    finally:
        context.close()
        scanner.http.close()
