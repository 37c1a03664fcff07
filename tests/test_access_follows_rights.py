"""Access follows every change of rights at once, on open sockets too (issue: security audit).

A change of role, area or active state, a sign-out, a revocation, an idle or shift limit
running out: each takes effect on the sockets already open, within two seconds, and a scan
sent on such a socket is not saved. And nothing crosses dispatch areas: what concerns no area
(bills, bags of no area) reaches only those who may see every area.
"""

import asyncio
import json

import pytest
from sqlalchemy import text

from tests.conftest import make_actor
from tests.sockets import close_code, events_seen, opened, receive_until, scan
from tests.web import ADMIN_PASSWORD, csrf_from, sign_in
from traitortrack.domain.roles import Role
from traitortrack.runtime import runtime
from traitortrack.services import bills, people
from traitortrack.services.commands import Actor

SIGNED_OUT, ACCESS_CHANGED = 4401, 4409


@pytest.fixture
def app(clocked_app):
    """The app, with a clock the tests move (lockouts, session expiry, TOTP steps)."""
    return clocked_app


async def _signed_in(app, name: str, password: str = "Secret-pass1"):
    client = app.test_client()
    assert (await sign_in(client, name, password)).status_code == 302
    return client


async def _bags(engine, code: str) -> int:
    async with engine.connect() as conn:
        return (
            await conn.execute(text("SELECT count(*) FROM bag WHERE code = :c"), {"c": code})
        ).scalar_one()


@pytest.fixture
async def boss(engine) -> Actor:
    return await make_actor(engine, Role.ADMIN, name="boss")


@pytest.fixture
async def ravi(engine) -> Actor:
    return await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")


# Rights that change while a socket is open ---------------------------------------------------


async def test_moving_a_dispatcher_to_another_area_closes_their_open_socket_within_two_seconds(
    app, engine, boss, ravi
):
    client = await _signed_in(app, "ravi")
    async with client.websocket("/ws?view=scanner") as scanner:
        assert (await opened(scanner))["area"] == "jaipur"
        moved = await people.update_person(engine, boss, ravi.user_id, "dispatcher", "indore")
        assert moved.ok
        runtime(app.app).live.bus.kick()

        assert await close_code(scanner, seconds=2) == ACCESS_CHANGED

    async with client.websocket("/ws?view=scanner") as again:
        assert (await opened(again))["area"] == "indore"
        assert (await scan(again, "r1", "SB10001"))["outcome"] == "ok"
    async with engine.connect() as conn:
        area = await conn.execute(text("SELECT area FROM bag WHERE code = 'SB10001'"))
        assert area.scalar_one() == "indore"


async def test_a_scan_sent_right_after_the_area_change_is_checked_against_the_new_area(
    app, engine, boss, ravi
):
    client = await _signed_in(app, "ravi")
    async with client.websocket("/ws?view=scanner") as scanner:
        await opened(scanner)
        await people.update_person(engine, boss, ravi.user_id, "dispatcher", "indore")
        # The change is known to the worker (the event arrived), before the sweeper ran.
        hub = runtime(app.app).live.hub
        async with asyncio.timeout(2):
            while not any(c.check_at == 0.0 for c in hub.connections):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        answer = await scan(scanner, "r1", "SB10001")

    assert answer["type"] == "error" and "not saved" in answer["message"].lower()
    assert await _bags(engine, "SB10001") == 0


async def test_deactivating_a_dispatcher_closes_their_socket_within_two_seconds(
    app, engine, boss, ravi
):
    client = await _signed_in(app, "ravi")
    async with client.websocket("/ws?view=scanner") as scanner:
        await opened(scanner)
        assert (await people.set_active(engine, boss, ravi.user_id, False)).ok
        assert await close_code(scanner, seconds=2) == SIGNED_OUT


async def test_a_role_change_closes_the_socket_and_the_new_role_applies_on_reconnect(
    app, engine, boss
):
    sam = await make_actor(engine, Role.SUPERVISOR, name="sam")
    client = await _signed_in(app, "sam")
    async with client.websocket("/ws?view=wall") as wall:
        assert (await opened(wall))["role"] == "supervisor"
        assert (await people.update_person(engine, boss, sam.user_id, "biller", None)).ok
        # A role change ends the sessions too: the person signs in again with the new role.
        assert await close_code(wall, seconds=2) == SIGNED_OUT


# Signing out --------------------------------------------------------------------------------


async def test_signing_out_ends_the_session_on_the_server_so_replayed_cookies_are_refused(
    app, ravi
):
    client = await _signed_in(app, "ravi")
    stolen = app.test_client()  # the same cookies, saved before signing out
    for cookie in client.cookie_jar:
        stolen.cookie_jar.set_cookie(cookie)
    assert (await stolen.get("/api/v1/session")).status_code == 200

    token = await csrf_from(client, "/")
    assert (await client.post("/logout", form={"csrf_token": token})).status_code == 302

    assert (await stolen.get("/api/v1/session")).status_code == 401


async def test_signing_out_closes_the_sockets_opened_with_that_session_only(app, ravi):
    phone = await _signed_in(app, "ravi")
    tablet = await _signed_in(app, "ravi")
    async with (
        phone.websocket("/ws?view=scanner") as on_phone,
        tablet.websocket("/ws?view=scanner") as on_tablet,
    ):
        await opened(on_phone)
        await opened(on_tablet)
        token = await csrf_from(phone, "/")
        await phone.post("/logout", form={"csrf_token": token})

        assert await close_code(on_phone, seconds=2) == SIGNED_OUT
        await on_tablet.send(json.dumps({"type": "ping"}))
        assert (await receive_until(on_tablet, "pong"))["type"] == "pong"


# Idle and shift limits on sockets ------------------------------------------------------------


async def test_an_idle_admin_socket_saves_nothing_once_thirty_minutes_have_passed(app, clock):
    client = await _signed_in(app, "admin", ADMIN_PASSWORD)
    async with client.websocket("/ws?view=scanner") as scanner:
        await opened(scanner)
        clock.advance(minutes=31)

        answer = await scan(scanner, "a1", "SB10002")

    assert answer["type"] == "error" and "sign in" in answer["message"].lower()
    assert (await client.get("/")).status_code == 302


async def test_scanning_over_the_socket_keeps_an_admin_session_alive(app, engine, clock):
    client = await _signed_in(app, "admin", ADMIN_PASSWORD)
    async with client.websocket("/ws?view=scanner") as scanner:
        await opened(scanner)
        for minute in range(4):
            clock.advance(minutes=20)
            assert (await scan(scanner, f"a{minute}", f"SB1000{minute}"))["outcome"] == "ok"
    assert (await client.get("/")).status_code == 200


async def test_a_dispatcher_socket_saves_nothing_after_the_twelve_hour_shift(app, engine, ravi):
    client = await _signed_in(app, "ravi")
    async with client.websocket("/ws?view=scanner") as scanner:
        await opened(scanner)
        runtime(app.app).clock.advance(hours=12, minutes=1)

        answer = await scan(scanner, "r1", "SB10003")

    assert answer["type"] == "error"
    assert await _bags(engine, "SB10003") == 0


async def test_a_wall_polling_its_figures_does_not_keep_an_admin_signed_in(app, clock):
    client = await _signed_in(app, "admin", ADMIN_PASSWORD)
    for _ in range(3):
        clock.advance(minutes=9)
        assert (await client.get("/api/v1/stats")).status_code == 200
        assert (await client.get("/api/v1/session")).status_code == 200
    clock.advance(minutes=4)
    assert (await client.get("/")).status_code == 302


async def test_the_stay_signed_in_button_extends_the_session(app, clock):
    client = await _signed_in(app, "admin", ADMIN_PASSWORD)
    token = await csrf_from(client, "/")
    clock.advance(minutes=25)
    kept = await client.post("/api/v1/session", headers={"X-CSRF-Token": token})
    assert kept.status_code == 200
    clock.advance(minutes=25)
    assert (await client.get("/")).status_code == 200


# No leak across dispatch areas ---------------------------------------------------------------


@pytest.fixture
async def biller(engine) -> Actor:
    return await make_actor(engine, Role.BILLER, name="bina")


async def test_bill_events_reach_no_dispatcher_socket_and_no_area_bound_display(
    app, engine, boss, ravi, biller
):
    made = await people.create_display_link(engine, boss, "Jaipur gate", ["jaipur"])
    display = app.test_client()
    assert (await display.get(f"/display/{made.token}")).status_code == 302
    dispatcher = await _signed_in(app, "ravi")
    supervisor_actor = await make_actor(engine, Role.SUPERVISOR, name="sam")
    supervisor = await _signed_in(app, supervisor_actor.username)
    async with (
        dispatcher.websocket("/ws") as on_floor,
        display.websocket("/ws?view=wall") as gate_tv,
        supervisor.websocket("/ws") as office,
    ):
        for ws in (on_floor, gate_tv, office):
            await opened(ws)
        assert (await bills.create_bill(engine, biller, "b1", "B-101", 5, "Jaipur mustard")).ok
        # A parent scanned by an admin belongs to no area.
        from traitortrack.services import scans

        assert (await scans.scan_parent(engine, boss, "p1", "SB20001")).ok
        runtime(app.app).live.bus.kick()

        seen_by_office = await events_seen(office, seconds=1.5)
        seen_on_floor = await events_seen(on_floor, seconds=0.3)
        seen_on_tv = await events_seen(gate_tv, seconds=0.3)

    assert {e["kind"] for e in seen_by_office} >= {"bill.created", "parent.scanned"}
    assert seen_on_floor == []
    assert seen_on_tv == []


async def test_replayed_and_fetched_events_leave_out_what_concerns_no_area(
    app, engine, boss, ravi, biller
):
    from traitortrack.services import scans

    assert (await scans.scan_parent(engine, ravi, "r1", "SB30001")).ok
    assert (await bills.create_bill(engine, biller, "b1", "B-102", 5, "")).ok
    assert (await scans.scan_parent(engine, boss, "p1", "SB30002")).ok
    client = await _signed_in(app, "ravi")

    fetched = await (await client.get("/api/v1/events?after=0")).get_json()
    async with client.websocket("/ws") as ws:
        await opened(ws, last_event_id=0)
        replayed = await events_seen(ws, seconds=0.5)

    for events in (fetched["events"], replayed):
        assert [(e["kind"], e["area"]) for e in events] == [("parent.scanned", "jaipur")]


async def test_an_area_bound_display_is_shown_no_bill_figures(app, engine, boss, biller):
    assert (await bills.create_bill(engine, biller, "b1", "B-103", 5, "")).ok
    made = await people.create_display_link(engine, boss, "Jaipur gate", ["jaipur"])
    display = app.test_client()
    await display.get(f"/display/{made.token}")

    figures = await (await display.get("/api/v1/stats")).get_json()
    page = await (await display.get("/wall")).get_data(as_text=True)

    assert figures["bills"] is None
    assert "Bills in progress" not in page


# Abuse limits -------------------------------------------------------------------------------


async def _audited(engine, action: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM audit WHERE action = :a"), {"a": action}
        )
        return found.scalar_one()


async def test_a_scanner_flooding_its_socket_is_refused_past_its_burst_and_audited_once(
    app, engine, ravi
):
    runtime(app.app).quotas.rate = 0.001  # no refill during the test: the burst is all it has
    client = await _signed_in(app, "ravi")
    async with client.websocket("/ws?view=scanner") as scanner:
        await opened(scanner)
        answers = [await scan(scanner, f"r{n}", f"SB{40000 + n}") for n in range(33)]

    assert [a.get("outcome") for a in answers[:30]] == ["ok"] * 30
    assert all(a["type"] == "error" and "Too many scans" in a["message"] for a in answers[30:])
    assert await _bags(engine, "SB40031") == 0
    assert await _audited(engine, "limit.scan_rate") == 1


async def test_scans_over_http_share_the_limit_and_answer_429(app, ravi):
    runtime(app.app).quotas.rate = 0.001
    runtime(app.app).quotas.burst = 2
    client = await _signed_in(app, "ravi")
    token = await csrf_from(client, "/")
    statuses = [
        (
            await client.post(
                "/api/v1/scans",
                json={"id": f"h{n}", "code": f"SB{50000 + n}", "as": "parent"},
                headers={"X-CSRF-Token": token},
            )
        ).status_code
        for n in range(3)
    ]
    assert statuses == [200, 200, 429]


async def test_one_account_cannot_hold_more_than_twenty_sockets(app, engine, ravi):
    from contextlib import AsyncExitStack

    from quart.testing import WebsocketResponseError

    client = await _signed_in(app, "ravi")
    async with AsyncExitStack() as stack:
        for _ in range(20):
            ws = await stack.enter_async_context(client.websocket("/ws"))
            await opened(ws)
        with pytest.raises(WebsocketResponseError) as refused:
            async with client.websocket("/ws") as one_more:
                await one_more.receive()

    assert refused.value.response.status_code == 429
    assert await _audited(engine, "limit.sockets") == 1
