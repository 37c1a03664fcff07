"""The wall display on a 1080p screen in a real browser: scans from elsewhere show within a
second, and after a network cut it shows exactly what the database holds, every scan once."""

import contextlib
import re
import socket
import threading
import time
import uuid

import httpx
import pytest

from tests.browser import SCREENSHOTS, query, sign_in
from tests.conftest import make_actor
from tests.live_cluster import free_port
from traitortrack.domain.roles import Role
from traitortrack.services import people

PASSWORD = "Secret-pass1"  # tests/conftest.py make_actor
TV = {"width": 1920, "height": 1080}
SHOWN_AREAS = "akola,hisar,indore,jaipur,lucknow,raipur"  # one page of six: no rotation
_CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')


class CuttableProxy:
    """A TCP hop between the browser and the app whose network can be cut and restored, as a
    Wi-Fi blip does to a TV: while cut, open connections are dropped and new ones refused.
    (Playwright's ``set_offline`` alone leaves open websockets untouched.)"""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            dropped, self.open = self.open, set()
        for end in dropped:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


class Scanner:
    """A dispatcher scanning through ``POST /api/v1/scans`` from another device."""

    def __init__(self, base: str, username: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=10)
        page = self.http.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        signed_in = self.http.post(
            "/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
        )
        assert signed_in.status_code in {302, 303}
        self.token = _CSRF_META.search(self.http.get("/").text).group(1)

    def scan(self, code: str, parent: str | None = None) -> dict:
        body = {"id": str(uuid.uuid4()), "code": code}
        body |= {"as": "child", "parent": parent} if parent else {"as": "parent"}
        response = self.http.post("/api/v1/scans", json=body, headers={"X-CSRF-Token": self.token})
        assert response.status_code == 200, response.text
        ack = response.json()
        assert ack["outcome"] == "ok", ack
        return ack


@pytest.fixture
async def floor(engine):
    supervisor = await make_actor(engine, Role.SUPERVISOR, None, name="floor_lead")
    dispatcher = await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    return supervisor, dispatcher


def _today_in_jaipur(settings) -> dict[str, int]:
    """The day's figures for jaipur as the database has them (the warehouses' day, IST)."""
    (row,) = query(
        settings,
        """
        WITH day AS (SELECT date_trunc('day', now() AT TIME ZONE 'Asia/Kolkata')
                            AT TIME ZONE 'Asia/Kolkata' AS start)
        SELECT
          (SELECT count(*) FROM bag, day WHERE kind = 'parent' AND area = 'jaipur'
             AND created_at >= day.start) AS parents,
          (SELECT count(*) FROM bag, day WHERE kind = 'parent' AND area = 'jaipur'
             AND status = 'completed' AND updated_at >= day.start) AS completed,
          (SELECT count(*) FROM link JOIN bag p ON p.id = link.parent_id, day
             WHERE p.area = 'jaipur' AND link.created_at >= day.start) AS children
        """,
    )
    return dict(row)


def _shown(page, selector: str) -> int:
    return int(re.sub(r"\D", "", page.inner_text(selector)) or 0)


def test_a_wall_shows_scans_live_and_exactly_the_database_after_a_network_cut(
    floor, settings, browser, web_server
):
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    scanner = Scanner(web_server.base, "ravi")
    scanner.scan("SB50001")
    for i in range(1, 26):
        scanner.scan(f"KID{i:05d}", parent="SB50001")

    proxy = CuttableProxy(web_server.port)
    context = browser.new_context(viewport=TV, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Failed requests while the network is cut are expected; a missing file never is.
    page.on("response", lambda r: r.status == 404 and errors.append(f"404 {r.url}"))
    base = f"http://127.0.0.1:{proxy.port}"
    try:
        sign_in(page, base, "floor_lead", PASSWORD)
        page.goto(f"{base}/wall?areas={SHOWN_AREAS}")
        status = page.locator("[data-status]")
        expect(status).to_have_attribute("data-status", "live")
        jaipur = page.locator('.area-card[data-area="jaipur"]')
        expect(jaipur.locator('[data-field="children"]')).to_have_text("25")
        expect(page.locator(".feed-row")).to_have_count(26)  # the parent and 25 children

        # A scan made elsewhere is on the wall within a second of its ack.
        scanner.scan("KID00026", parent="SB50001")
        acked = time.monotonic()
        page.wait_for_selector('.feed-row[data-code="KID00026"]', timeout=1_000)
        shown_after = time.monotonic() - acked
        assert shown_after < 1.0

        # The network goes for 10 s while 20 scans happen, then comes back.
        proxy.cut()
        context.set_offline(True)
        expect(status).to_have_attribute("data-status", "reconnecting", timeout=5_000)
        cut_at = time.monotonic()
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "wall-1080p-reconnecting.png"))
        offline_codes = [f"KID{i:05d}" for i in range(27, 31)]  # the 30th completes SB50001
        for code in offline_codes:
            scanner.scan(code, parent="SB50001")
        scanner.scan("SB50002")
        offline_codes.append("SB50002")
        for i in range(31, 46):
            scanner.scan(f"KID{i:05d}", parent="SB50002")
            offline_codes.append(f"KID{i:05d}")
            time.sleep(0.5)
        assert len(offline_codes) == 20
        time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
        assert page.locator('.feed-row[data-code="SB50002"]').count() == 0  # really cut off
        proxy.restore()
        context.set_offline(False)

        expect(status).to_have_attribute("data-status", "live")
        expect(page.locator('.feed-row[data-code="KID00045"]')).to_have_count(1)
        truth = _today_in_jaipur(settings)
        assert truth == {"parents": 2, "completed": 1, "children": 45}
        for field, value in truth.items():
            expect(jaipur.locator(f'[data-field="{field}"]')).to_have_text(str(value))
            expect(page.locator(f'[data-total="{field}"]')).to_have_text(str(value))

        # The feed: every scan once, newest first, nothing missing, nothing doubled.
        rows = page.locator(".feed-row").evaluate_all(
            "rows => rows.map(r => [Number(r.dataset.eventId), r.dataset.code])"
        )
        ids = [event_id for event_id, _ in rows]
        assert len(ids) == len(set(ids)) and ids == sorted(ids, reverse=True)
        assert len(rows) == 40  # bounded: the oldest rows made way
        expected = query(
            settings,
            "SELECT id FROM event WHERE kind <> 'parent.completed' ORDER BY id DESC LIMIT 39",
        )
        completed = query(settings, "SELECT id FROM event WHERE kind = 'parent.completed'")
        assert set(ids) == {r["id"] for r in expected} | {completed[0]["id"]}
        assert {code for _, code in rows} >= {*offline_codes, "KID00026"}
        assert errors == [], errors

        path = SCREENSHOTS / "wall-1080p.png"
        page.wait_for_timeout(1_000)  # the newest row's slide-in has finished
        page.screenshot(path=str(path))  # the screen as the room sees it, 1920x1080
        print(f"scan to wall: {shown_after * 1000:.0f} ms; screenshot: {path}")
    finally:
        context.close()
        proxy.close()
        scanner.http.close()


@pytest.mark.usefixtures("floor")
def test_a_wall_reloads_itself_for_a_new_deployment_and_only_then(settings, browser, web_server):
    from playwright.sync_api import expect

    proxy = CuttableProxy(web_server.port)
    context = browser.new_context(viewport=TV)
    page = context.new_page()
    base = f"http://127.0.0.1:{proxy.port}"
    loads: list[str] = []
    try:
        sign_in(page, base, "floor_lead", PASSWORD)
        page.on("load", lambda: loads.append(page.url))
        page.goto(f"{base}/wall")
        status = page.locator("[data-status]")
        expect(status).to_have_attribute("data-status", "live", timeout=10_000)

        def blip() -> None:
            proxy.cut()
            expect(status).to_have_attribute("data-status", "reconnecting", timeout=5_000)
            proxy.restore()
            expect(status).to_have_attribute("data-status", "live", timeout=20_000)

        # Back from a blip, same deployment: it checks (within 5 s) and stays.
        blip()
        page.wait_for_timeout(6_000)
        assert len(loads) == 1

        def next_version(route) -> None:
            response = route.fetch()
            route.fulfill(response=response, json={**response.json(), "version": "next"})

        page.route("**/api/v1/stats*", next_version)
        blip()
        page.wait_for_timeout(6_000)
        expect(status).to_have_attribute("data-status", "live", timeout=10_000)
        # One reload, not a loop: the new page sees "next" too, but waits a minute to retry.
        page.wait_for_timeout(2_000)
        assert len(loads) == 2
    finally:
        context.close()
        proxy.close()


@pytest.fixture
async def display_token(engine) -> str:
    admin = await make_actor(engine, Role.ADMIN)
    done = await people.create_display_link(engine, admin, "Dock 3 TV", ["jaipur"])
    assert done.token
    return done.token


def test_a_revoked_display_link_says_so_on_the_screen(display_token, settings, browser, web_server):
    from playwright.sync_api import expect

    proxy = CuttableProxy(web_server.port)
    context = browser.new_context(viewport=TV)
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{proxy.port}/display/{display_token}")
        expect(page.locator("[data-scope]")).to_have_text("Dock 3 TV")
        expect(page.locator(".area-card")).to_have_count(1)  # its one area
        expect(page.locator("[data-status]")).to_have_attribute("data-status", "live")
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "wall-one-area.png"))  # a TV at one dock
        query(settings, "UPDATE display_link SET revoked_at = now()")
        proxy.cut()  # the next reconnect is refused, and the screen finds out why
        expect(page.locator("[data-status]")).to_have_attribute("data-status", "reconnecting")
        proxy.restore()
        expect(page.locator("[data-banner]")).to_contain_text("signed out", timeout=20_000)
        expect(page.locator("[data-status]")).to_have_attribute("data-status", "offline")
        page.screenshot(path=str(SCREENSHOTS / "wall-revoked-link.png"))
    finally:
        context.close()
        proxy.close()
