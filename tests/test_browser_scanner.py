"""The scanner screen in a real browser (SPEC §2): a keyboard-wedge scanner, outcomes seen and
heard, undo and finish, rejections that stay, and scans made offline that arrive once; a wedge
scanner that stalls, has no Enter or types slowly never saves a code it did not send whole."""

import pytest

from tests.browser import PHONE, SCREENSHOTS, app_server, in_another_loop, query, sign_in
from tests.browser import screenshot as full_page

PASSWORD = "Secret-pass1"  # tests/conftest.py make_actor
RED = "rgb(179, 38, 30)"  # --error in static/css/app.css
GREEN = "rgb(10, 125, 50)"  # --ok
SMALL_PHONE = {"width": 390, "height": 844}


@pytest.fixture
def expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
    return expect


def watch(page, problems: list[str] | None = None) -> list[str]:
    """Script errors and Content-Security-Policy refusals on the page (there must be none)."""
    problems = [] if problems is None else problems
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: (
            "Content Security Policy" in message.text and problems.append(f"CSP: {message.text}")
        ),
    )
    return problems


def open_scanner(browser, base: str, username: str, expect, viewport=PHONE):
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    problems = watch(page)
    sign_in(page, base, username, PASSWORD)
    page.goto(f"{base}/scan")
    expect(page.locator("[data-scanner]")).to_have_attribute("data-link", "live")
    return context, page, problems


def wedge(page, code: str) -> None:
    """A keyboard-wedge scanner: the code typed fast, then Enter."""
    page.keyboard.type(code, delay=5)
    page.keyboard.press("Enter")


def screenshot(page, name: str) -> None:
    """The whole page, and what a phone shows without scrolling (fixed bars where they are)."""
    full_page(page, name)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-screen.png"))


def sounds(page) -> int:
    return int(page.locator("[data-scanner]").get_attribute("data-sound-count") or 0)


def keys(page, code: str, gaps: list[int]) -> None:
    """A scanner with uneven timing: each character, then its own pause (ms) before the next."""
    for character, gap in zip(code, gaps, strict=True):
        page.keyboard.type(character)
        if gap:
            page.wait_for_timeout(gap)


def bag_codes(settings) -> set[str]:
    return {row["code"] for row in query(settings, "SELECT code FROM bag")}


def children_of(settings, parent: str) -> list[str]:
    rows = query(
        settings,
        "SELECT c.code FROM link JOIN bag c ON c.id = link.child_id"
        " JOIN bag p ON p.id = link.parent_id WHERE p.code = $1 ORDER BY c.code",
        parent,
    )
    return [row["code"] for row in rows]


def stock(settings, dispatcher, parents: dict[str, list[str]]) -> None:
    from tests.warehouse import stock as scan_all

    in_another_loop(settings, lambda engine: scan_all(engine, dispatcher, parents))


def fits(page, selector: str) -> bool:
    """The element shows all its text: nothing cut off or hidden behind an ellipsis."""
    return page.locator(selector).evaluate("e => e.scrollWidth <= e.clientWidth")


def test_a_dispatcher_scans_a_parent_and_thirty_children_with_a_wedge_scanner(
    dispatcher, browser, web_server, settings, expect
):
    context, page, problems = open_scanner(browser, web_server.base, dispatcher.username, expect)
    root = page.locator("[data-scanner]")
    banner = page.locator("[data-banner]")
    progress = page.locator("[data-progress]")
    screenshot(page, "scanner-phone-start")

    wedge(page, "SB00001")
    expect(banner).to_contain_text("SB00001 created (0/30), scan child bags")
    expect(banner).to_have_attribute("data-outcome", "ok")
    expect(root).to_have_attribute("data-step", "child")
    expect(progress).to_have_text("0/30")
    for n in range(1, 31):
        code = f"C{n:04d}"
        before = sounds(page)
        wedge(page, code)
        expect(banner).to_contain_text(f"{code} linked ({n}/30)")
        expect(progress).to_have_text(f"{n}/30")
        expect(page.locator("[data-last-child]")).to_have_text(code)
        # The 30th child has its own tune: this bag is full, take the next one.
        expect(root).to_have_attribute("data-last-sound", "ok" if n < 30 else "complete")
        assert sounds(page) == before + 1
        if n == 12:
            screenshot(page, "scanner-phone-child-ok")
            wedge(page, "C0005")
            expect(banner).to_contain_text("C0005 already scanned (12/30)")
            expect(banner).to_have_attribute("data-outcome", "duplicate")
            expect(root).to_have_attribute("data-last-sound", "duplicate")
            screenshot(page, "scanner-phone-duplicate")
    expect(page.locator("[data-parent-state]")).to_have_text("completed")
    expect(page.locator("[data-step-text]")).to_contain_text("next parent")
    screenshot(page, "scanner-phone-completed")

    # A person typing at people's speed in the same field is not a scanner.
    heard = sounds(page)
    page.locator("#wedge").focus()
    page.keyboard.type("C0099", delay=150)
    page.keyboard.press("Enter")
    page.wait_for_timeout(400)
    assert sounds(page) == heard
    expect(banner).to_contain_text("C0030 linked (30/30)")
    expect(page.locator("[data-manual-hint]")).to_be_visible()

    [parent] = query(settings, "SELECT child_count, status FROM bag WHERE code = 'SB00001'")
    assert (parent["child_count"], parent["status"]) == (30, "completed")
    assert query(settings, "SELECT 1 FROM bag WHERE code = 'C0099'") == []
    assert problems == []
    context.close()


def test_a_rejection_shows_the_spec_message_in_red_until_the_next_scan(
    dispatcher, browser, web_server, expect
):
    context, page, problems = open_scanner(browser, web_server.base, dispatcher.username, expect)
    root = page.locator("[data-scanner]")
    banner = page.locator("[data-banner]")

    # With no parent yet, a code that cannot be a parent is refused on the spot.
    wedge(page, "C0001")
    expect(banner).to_have_attribute("data-outcome", "rejected")
    expect(banner).to_contain_text("Parent bag QR must be format SB##### (e.g., SB00001)")

    for code in ("SB00001", "C0001", "SB00002"):  # a parent-format code switches parent
        wedge(page, code)
        expect(banner).to_have_attribute("data-outcome", "ok")
    expect(page.locator("[data-parent-code]")).to_have_text("SB00002")
    wedge(page, "C0001")
    message = "Child bag C0001 is already linked to parent bag SB00001."
    expect(banner).to_contain_text(message)
    expect(banner).to_have_attribute("data-outcome", "rejected")
    expect(root).to_have_attribute("data-last-sound", "rejected")
    assert banner.evaluate("e => getComputedStyle(e).backgroundColor") == RED
    expect(page.locator("[data-rejected-list]")).to_contain_text(message)
    screenshot(page, "scanner-phone-rejected")

    # It stays: time passing, stray key presses and taps do not clear it. (Keys typed at a
    # person's speed are forgotten once they stop: they would not join the next scan.)
    page.keyboard.type("XY", delay=150)
    page.locator(".parent-card").click()
    page.wait_for_timeout(1600)
    expect(banner).to_contain_text(message)
    expect(banner).to_have_attribute("data-outcome", "rejected")

    wedge(page, "C0002")
    expect(banner).to_contain_text("C0002 linked (1/30)")
    expect(banner).to_have_attribute("data-outcome", "ok")
    # Still listed until the person clears the list.
    expect(page.locator("[data-rejected-list]")).to_contain_text(message)
    page.set_viewport_size({"width": 1280, "height": 900})
    screenshot(page, "scanner-desktop")
    page.click("[data-clear-rejected]")
    expect(page.locator("[data-rejected]")).to_be_hidden()
    assert problems == []
    context.close()


def test_undo_removes_the_last_child_and_finish_goes_back_to_scanning_a_parent(
    dispatcher, browser, web_server, settings, expect
):
    context, page, problems = open_scanner(browser, web_server.base, dispatcher.username, expect)
    banner = page.locator("[data-banner]")
    progress = page.locator("[data-progress]")
    for code in ("M444-00001", "KID001", "KID002"):
        wedge(page, code)
        expect(banner).to_have_attribute("data-outcome", "ok")
    expect(progress).to_have_text("2/30")

    page.click("[data-undo]")
    expect(banner).to_contain_text("Removed KID002 from M444-00001 (1/30)")
    expect(progress).to_have_text("1/30")
    # The tap left the focus on the button; the next scan's Enter must not press it again.
    wedge(page, "KID003")
    expect(banner).to_contain_text("KID003 linked (2/30)")

    page.click("[data-finish]")
    expect(banner).to_contain_text("M444-00001 finished with 2/30 child bags")
    expect(page.locator("[data-scanner]")).to_have_attribute("data-step", "parent")
    expect(page.locator("[data-finish]")).to_be_disabled()
    screenshot(page, "scanner-phone-finished")

    # Typed by hand: the same flow, resuming the parent.
    page.fill("#manual-code", "m444-00001")
    page.click("[data-manual] button[type=submit]")
    expect(banner).to_contain_text("M444-00001: 2/30, continue adding children")
    linked = query(
        settings,
        "SELECT c.code FROM link JOIN bag c ON c.id = link.child_id ORDER BY c.code",
    )
    assert [row["code"] for row in linked] == ["KID001", "KID003"]
    assert problems == []
    context.close()


def test_scans_made_offline_survive_a_reload_and_are_saved_exactly_once(
    dispatcher, browser, web_server, settings, expect
):
    context, page, problems = open_scanner(browser, web_server.base, dispatcher.username, expect)
    banner = page.locator("[data-banner]")
    wedge(page, "SB00001")
    expect(banner).to_have_attribute("data-outcome", "ok")

    context.set_offline(True)
    expect(page.locator("[data-scanner]")).to_have_attribute("data-link", "offline")
    for n in range(1, 6):
        wedge(page, f"C{n:04d}")
        expect(page.locator("[data-pending-count]")).to_have_text(str(n))
        expect(banner).to_have_attribute("data-outcome", "pending")
    expect(page.locator("[data-scanner]")).to_have_attribute("data-last-sound", "pending")
    expect(page.locator("[data-progress]")).to_have_text("5/30")
    expect(page.locator("[data-recent-list] li[data-outcome=pending]")).to_have_count(5)
    screenshot(page, "scanner-phone-offline")
    assert query(settings, "SELECT 1 FROM link") == []

    # The page goes away before it could send anything; the scans are in IndexedDB.
    page.close()
    context.set_offline(False)
    page = context.new_page()
    watch(page, problems)
    page.goto(f"{web_server.base}/scan")
    expect(page.locator("[data-pending-count]")).to_have_text("0")
    expect(page.locator("[data-recent-list] li[data-outcome=ok]")).to_have_count(6)
    expect(page.locator("[data-progress]")).to_have_text("5/30")
    expect(page.locator("[data-banner]")).to_contain_text("C0005 linked (5/30)")
    screenshot(page, "scanner-phone-back-online")

    def saved():
        links = query(settings, "SELECT count(*) AS n FROM link")[0]["n"]
        scans = query(settings, "SELECT action, count(*) AS n FROM scan GROUP BY action")
        [parent] = query(settings, "SELECT child_count FROM bag WHERE code = 'SB00001'")
        return links, {row["action"]: row["n"] for row in scans}, parent["child_count"]

    assert saved() == (5, {"scan_parent": 1, "link_child": 5}, 5)

    # Sending them all again (as after a lost ack) changes nothing: the server knows the ids.
    page.evaluate(
        """() => new Promise((resolve, reject) => {
            const open = indexedDB.open("traitortrack");
            open.onsuccess = () => {
                const tx = open.result.transaction("outbox", "readwrite");
                const store = tx.objectStore("outbox");
                store.getAll().onsuccess = (e) => {
                    for (const r of e.target.result) store.put({ ...r, outcome: "pending" });
                };
                tx.oncomplete = () => resolve();
                tx.onerror = () => reject(tx.error);
            };
        })"""
    )
    page.reload()
    expect(page.locator("[data-recent-list] li[data-outcome=ok]")).to_have_count(6)
    expect(page.locator("[data-pending-count]")).to_have_text("0")
    assert saved() == (5, {"scan_parent": 1, "link_child": 5}, 5)
    assert problems == []
    context.close()


def qr_video(path, text: str, width: int = 640, height: int = 480) -> None:
    """A few frames of a still QR code, as the Y4M file Chromium's fake camera plays."""
    import segno

    rows = list(segno.make(text, error="m", micro=False).matrix_iter(scale=8, border=4))
    top, left = (height - len(rows)) // 2, (width - len(rows[0])) // 2
    luma = bytearray(b"\xeb" * (width * height))  # white (video range)
    for y, row in enumerate(rows):
        for x, dark in enumerate(row):
            if dark:
                luma[(top + y) * width + left + x] = 0x10
    chroma = b"\x80" * (width * height // 2)  # no colour
    with open(path, "wb") as video:
        video.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(10):
            video.write(b"FRAME\n" + bytes(luma) + chroma)


def test_a_phone_camera_reads_a_parent_label_with_a_decoder_from_our_own_origin(
    dispatcher, web_server, tmp_path, expect
):
    import shutil

    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM_ARGS

    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("NO CHROMIUM: install Debian's chromium (scripts/test.sh does, as root)")
    video = tmp_path / "label.y4m"
    qr_video(video, "SB00042")
    camera = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=[*CHROMIUM_ARGS, *camera]
        )
        context = browser.new_context(viewport=PHONE, permissions=["camera"])
        page = context.new_page()
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        problems = watch(page)
        sign_in(page, web_server.base, dispatcher.username, PASSWORD)
        page.goto(f"{web_server.base}/scan")
        expect(page.locator("[data-scanner]")).to_have_attribute("data-link", "live")
        page.click("[data-camera-toggle]")
        banner = page.locator("[data-banner]")
        expect(banner).to_contain_text("SB00042 created (0/30)")
        expect(page.locator("[data-parent-code]")).to_have_text("SB00042")
        decoder = page.locator("[data-scanner]").get_attribute("data-camera-decoder")
        assert decoder in {"native", "qr-scanner"}
        # The same label held still is one scan, not one per frame.
        page.wait_for_timeout(1000)
        expect(page.locator("[data-recent-list] li")).to_have_count(1)
        screenshot(page, "scanner-phone-camera")
        page.click("[data-camera-toggle]")
        expect(page.locator("[data-camera-view]")).to_be_hidden()
        assert all(url.startswith(web_server.base) for url in requests), requests
        assert any(url.endswith("/qr-scanner-worker.js") for url in requests) == (
            decoder == "qr-scanner"
        )
        assert problems == []
        browser.close()


def test_a_scanner_that_stalls_mid_code_saves_the_whole_code_or_nothing(
    dispatcher, browser, web_server, settings, expect
):
    context, page, problems = open_scanner(browser, web_server.base, dispatcher.username, expect)
    root = page.locator("[data-scanner]")
    banner = page.locator("[data-banner]")
    confirm = page.locator("[data-confirm]")
    wedge(page, "SB00001")
    expect(banner).to_contain_text("SB00001 created (0/30)")
    wedge(page, "C0001")  # this device's scanner ends its codes with Enter
    expect(banner).to_contain_text("C0001 linked (1/30)")

    # A pause inside a code (a busy phone, a Bluetooth hiccup) does not cut it in two.
    page.keyboard.type("UX812", delay=8)
    page.wait_for_timeout(150)
    page.keyboard.type("PAUSE1", delay=8)
    page.keyboard.press("Enter")
    expect(banner).to_contain_text("UX812PAUSE1 linked (2/30)")
    expect(banner).to_have_attribute("data-outcome", "ok")

    # Uneven gaps between keys, one close to a person's: still one code.
    keys(page, "JIT0042", [3, 25, 12, 40, 7, 90, 0])
    page.keyboard.press("Enter")
    expect(banner).to_contain_text("JIT0042 linked (3/30)")

    # A stall longer than a scanner ever pauses: what came is dropped, loudly...
    page.keyboard.type("UX813", delay=8)
    page.wait_for_timeout(2000)
    expect(banner).to_have_attribute("data-outcome", "interrupted")
    expect(banner).to_contain_text("Scan the bag again")
    expect(root).to_have_attribute("data-last-sound", "interrupted")
    screenshot(page, "scanner-phone-interrupted")
    # ...and the rest of the code, when it comes, is only offered, never saved on its own.
    page.keyboard.type("TAIL2", delay=8)
    page.keyboard.press("Enter")
    expect(banner).to_have_attribute("data-outcome", "check")
    expect(page.locator("[data-confirm-code]")).to_have_text("TAIL2")
    expect(banner).to_contain_text("UX813")
    page.wait_for_timeout(500)
    assert "TAIL2" not in bag_codes(settings)
    page.click("[data-confirm-discard]")
    expect(confirm).to_be_hidden()

    wedge(page, "UX813TAIL2")
    expect(banner).to_contain_text("UX813TAIL2 linked (4/30)")

    # A key pressed just before a scan is not quietly made part of the code.
    page.keyboard.type("X")
    page.wait_for_timeout(400)
    wedge(page, "C0009")
    expect(page.locator("[data-confirm-code]")).to_have_text("XC0009")
    page.click("[data-confirm-discard]")
    expect(confirm).to_be_hidden()
    assert children_of(settings, "SB00001") == ["C0001", "JIT0042", "UX812PAUSE1", "UX813TAIL2"]
    assert not {"UX812", "PAUSE1", "UX813", "TAIL2"} & bag_codes(settings)
    assert problems == []
    context.close()


def test_a_code_that_ends_without_enter_is_shown_for_confirmation_never_saved_silently(
    dispatcher, browser, web_server, settings, expect
):
    context, page, problems = open_scanner(
        browser, web_server.base, dispatcher.username, expect, viewport=SMALL_PHONE
    )
    root = page.locator("[data-scanner]")
    banner = page.locator("[data-banner]")
    confirm = page.locator("[data-confirm]")
    code = page.locator("[data-confirm-code]")
    # Typed by hand: this device has not yet seen its scanner end a code with Enter.
    page.fill("#manual-code", "SB00001")
    page.click("[data-manual] button[type=submit]")
    expect(banner).to_contain_text("SB00001 created (0/30)")

    page.keyboard.type("C0001", delay=8)
    expect(banner).to_have_attribute("data-outcome", "check")
    expect(code).to_have_text("C0001")
    expect(root).to_have_attribute("data-last-sound", "check")
    page.wait_for_timeout(600)
    assert children_of(settings, "SB00001") == []
    screenshot(page, "scanner-phone-confirm")
    page.click("[data-confirm-save]")
    expect(banner).to_contain_text("C0001 linked (1/30)")
    expect(confirm).to_be_hidden()

    # A pause inside such a code: one code to confirm, not two.
    page.keyboard.type("UX8", delay=8)
    page.wait_for_timeout(150)
    page.keyboard.type("12AB", delay=8)
    expect(code).to_have_text("UX812AB")
    # The rest of it after a long stall: both pieces are fragments, neither is offered whole.
    page.wait_for_timeout(2000)
    page.keyboard.type("TAIL9", delay=8)
    page.keyboard.press("Enter")
    expect(code).to_have_text("TAIL9")
    expect(banner).to_contain_text("UX812AB")
    page.click("[data-confirm-discard]")
    expect(confirm).to_be_hidden()

    # Under 4 characters nothing is offered or sent.
    heard = sounds(page)
    page.keyboard.type("AB", delay=8)
    page.keyboard.press("Enter")
    page.wait_for_timeout(400)
    expect(confirm).to_be_hidden()
    assert sounds(page) == heard
    assert children_of(settings, "SB00001") == ["C0001"]
    assert not {"UX8", "UX812AB", "TAIL9", "12AB", "AB"} & bag_codes(settings)
    assert problems == []
    context.close()


def test_a_slow_scanner_is_taken_when_steady_and_asked_about_when_uneven(
    dispatcher, browser, web_server, settings, expect
):
    context, page, problems = open_scanner(browser, web_server.base, dispatcher.username, expect)
    root = page.locator("[data-scanner]")
    banner = page.locator("[data-banner]")
    wedge(page, "SB00001")
    expect(banner).to_contain_text("SB00001 created (0/30)")

    page.keyboard.type("SLOW01", delay=60)
    page.keyboard.press("Enter")
    expect(banner).to_contain_text("SLOW01 linked (1/30)")

    # Slower still, with gaps a person makes: not dropped without a word, not saved either.
    keys(page, "SLOW02", [60, 150, 60, 150, 60, 0])
    page.keyboard.press("Enter")
    expect(banner).to_have_attribute("data-outcome", "check")
    expect(banner).to_contain_text("typed too slowly to be a scanner")
    expect(page.locator("[data-confirm-code]")).to_have_text("SLOW02")
    expect(root).to_have_attribute("data-last-sound", "check")
    screenshot(page, "scanner-phone-too-slow")
    assert "SLOW02" not in bag_codes(settings)
    page.click("[data-confirm-save]")
    expect(banner).to_contain_text("SLOW02 linked (2/30)")
    assert children_of(settings, "SB00001") == ["SLOW01", "SLOW02"]
    assert problems == []
    context.close()


def test_scanning_another_parent_mid_fill_says_which_was_left_and_offers_to_resume_it(
    dispatcher, browser, web_server, settings, expect
):
    stock(settings, dispatcher, {"SB00234": ["K2341", "K2342", "K2343"]})
    context, page, problems = open_scanner(
        browser, web_server.base, dispatcher.username, expect, viewport=SMALL_PHONE
    )
    root = page.locator("[data-scanner]")
    banner = page.locator("[data-banner]")
    unfinished = page.locator("[data-unfinished-list] button")
    wedge(page, "SB00044")
    expect(banner).to_contain_text("SB00044 created (0/30)")
    for n in range(1, 18):
        wedge(page, f"K{n:04d}")
    expect(page.locator("[data-progress]")).to_have_text("17/30")
    expect(banner).to_contain_text("K0017 linked (17/30)")

    wedge(page, "SB00234")
    expect(banner).to_contain_text("Left SB00044 at 17/30 — now SB00234 3/30")
    expect(banner).to_have_attribute("data-kind", "switched")
    expect(banner).to_have_attribute("data-outcome", "ok")
    expect(root).to_have_attribute("data-last-sound", "switch")
    assert banner.evaluate("e => getComputedStyle(e).backgroundColor") != GREEN
    expect(unfinished).to_have_count(1)
    expect(unfinished).to_contain_text(["SB00044"])
    expect(unfinished).to_contain_text(["17/30"])
    assert fits(page, "[data-step-text]")
    screenshot(page, "scanner-phone-parent-switch")
    card = page.locator("[data-unfinished]")
    card.evaluate("e => e.scrollIntoView({ block: 'center' })")  # clear of the bottom bar
    card.screenshot(path=str(SCREENSHOTS / "scanner-phone-unfinished.png"))
    assert fits(page, "[data-unfinished]")

    # Kept for the shift: a reload still lists it; one tap resumes it.
    page.reload()
    expect(root).to_have_attribute("data-link", "live")
    expect(unfinished).to_have_count(1)
    unfinished.first.click()
    expect(banner).to_contain_text("Left SB00234 at 3/30 — now SB00044 17/30")
    expect(page.locator("[data-parent-code]")).to_have_text("SB00044")
    expect(unfinished).to_have_count(1)
    expect(unfinished).to_contain_text(["SB00234"])
    wedge(page, "K0018")
    expect(banner).to_contain_text("K0018 linked (18/30)")

    # Going back to a parent that was finished or never started is no switch.
    page.click("[data-finish]")
    expect(banner).to_contain_text("SB00044 finished with 18/30")
    wedge(page, "SB00234")
    expect(banner).to_have_attribute("data-kind", "ok")
    expect(unfinished).to_have_count(0)
    assert len(children_of(settings, "SB00044")) == 18
    assert len(children_of(settings, "SB00234")) == 3
    assert problems == []
    context.close()


def test_a_full_bag_and_an_undo_have_their_own_banners_and_the_step_fits_a_small_phone(
    dispatcher, browser, web_server, settings, expect
):
    stock(settings, dispatcher, {"SB00001": [f"C{n:04d}" for n in range(1, 30)]})
    context, page, problems = open_scanner(
        browser, web_server.base, dispatcher.username, expect, viewport=SMALL_PHONE
    )
    root = page.locator("[data-scanner]")
    banner = page.locator("[data-banner]")
    wedge(page, "SB00001")
    expect(banner).to_contain_text("SB00001: 29/30")
    wedge(page, "C0030")
    expect(banner).to_contain_text("C0030 linked (30/30)")
    expect(banner).to_contain_text("SB00001 is full")
    expect(banner).to_have_attribute("data-kind", "complete")
    expect(root).to_have_attribute("data-last-sound", "complete")
    complete = banner.evaluate("e => getComputedStyle(e).backgroundColor")
    assert complete != GREEN
    assert fits(page, "[data-step-text]")
    screenshot(page, "scanner-phone-complete-390")

    page.click("[data-undo]")
    expect(banner).to_contain_text("Removed C0030 from SB00001 (29/30)")
    expect(banner).to_have_attribute("data-kind", "undone")
    expect(banner).to_have_attribute("data-outcome", "ok")
    expect(root).to_have_attribute("data-last-sound", "undo")
    assert banner.evaluate("e => getComputedStyle(e).backgroundColor") not in {GREEN, complete}
    assert fits(page, "[data-step-text]")
    screenshot(page, "scanner-phone-undo-390")
    assert len(children_of(settings, "SB00001")) == 29
    assert problems == []
    context.close()


def test_a_scan_the_server_could_not_save_says_so_and_is_sent_again_until_saved(
    dispatcher, browser, settings, tmp_path, expect
):
    # A server that lets an account scan twice, then once every two seconds.
    limited = app_server(settings, tmp_path / "limited", SCAN_BURST="2", SCANS_PER_SECOND="0.5")
    with limited as server:
        _scan_past_the_limit(browser, server.base, dispatcher.username, settings, expect)


def _scan_past_the_limit(browser, base: str, username: str, settings, expect) -> None:
    context, page, problems = open_scanner(browser, base, username, expect)
    banner = page.locator("[data-banner]")
    wedge(page, "SB00051")
    expect(banner).to_contain_text("SB00051 created")
    wedge(page, "KID0001")
    expect(banner).to_contain_text("KID0001 linked (1/30)")

    wedge(page, "KID0002")  # past the limit: not saved, and told so
    expect(banner).to_contain_text("Too many scans")
    expect(banner).to_contain_text("Retrying")
    screenshot(page, "scanner-phone-not-saved-retrying")
    expect(banner).to_contain_text("KID0002 linked (2/30)")

    assert children_of(settings, "SB00051") == ["KID0001", "KID0002"]
    assert problems == []
    context.close()
