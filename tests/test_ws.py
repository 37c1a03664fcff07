import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from quart.testing import WebsocketResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.conftest import make_actor
from tests.web import ADMIN_PASSWORD, app_for, sign_in
from traitortrack.domain.roles import Role
from traitortrack.runtime import runtime
from traitortrack.services import scans

INSERT = text(
    "INSERT INTO event (kind, area, payload) VALUES ('child.linked', 'jaipur', '{}') RETURNING id"
)


async def _receive_until(ws, kind: str, seconds: float = 3.0) -> dict:
    async with asyncio.timeout(seconds):
        while True:
            message = json.loads(await ws.receive())
            if message["type"] == kind:
                return message


async def _dispatcher_client(app, engine, name="ravi", area="jaipur"):
    await make_actor(engine, Role.DISPATCHER, area, name=name)
    client = app.test_client()
    await sign_in(client, name, "Secret-pass1")
    return client


async def test_an_anonymous_websocket_is_refused_before_it_opens(app):
    with pytest.raises(WebsocketResponseError) as refused:
        async with app.test_client().websocket("/ws") as ws:
            await ws.receive()
    assert refused.value.response.status_code == 401


async def test_a_websocket_from_another_site_is_refused(app, engine):
    client = await _dispatcher_client(app, engine)
    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket("/ws", headers={"Origin": "https://evil.example"}) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 403


async def test_a_scan_is_acked_on_the_same_socket_right_after_commit(app, engine):
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "last_event_id": None}))
        welcome = await _receive_until(ws, "welcome")
        assert welcome["role"] == "dispatcher"
        scan_id = str(uuid.uuid4())
        await ws.send(
            json.dumps({"type": "scan", "id": scan_id, "code": "SB10001", "as": "parent"})
        )
        ack = await _receive_until(ws, "ack")
        assert ack["id"] == scan_id
        assert ack["outcome"] == "ok"
        assert ack["parent"] == {"code": "SB10001", "children": 0, "status": "pending"}
        await ws.send(
            json.dumps(
                {"type": "scan", "id": "c-1", "code": "kid01", "as": "child", "parent": "SB10001"}
            )
        )
        ack = await _receive_until(ws, "ack")
        assert ack["message"] == "KID01 linked (1/30)"
        events = await _receive_until(ws, "events")
        assert events["events"][0]["kind"] in {"parent.scanned", "child.linked"}


async def test_undo_and_finish_of_the_current_parent_are_acked_like_scans(app, engine):
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        await _receive_until(ws, "welcome")
        for message in (
            {"type": "scan", "id": "p", "code": "SB10001", "as": "parent"},
            {"type": "scan", "id": "c1", "code": "KID01", "as": "child", "parent": "SB10001"},
            {"type": "scan", "id": "c2", "code": "KID02", "as": "child", "parent": "SB10001"},
            {"type": "undo", "id": "u", "parent": "SB10001"},
            {"type": "finish", "id": "f", "parent": "SB10001"},
            {"type": "finish", "id": "f", "parent": "SB10001"},  # a replay: same answer
        ):
            await ws.send(json.dumps(message))
        acks = [await _receive_until(ws, "ack") for _ in range(6)]
    assert [a["id"] for a in acks] == ["p", "c1", "c2", "u", "f", "f"]
    assert acks[3]["message"] == "Removed KID02 from SB10001 (1/30)"
    assert acks[4]["outcome"] == "ok"
    assert acks[4]["message"] == "SB10001 finished with 1/30 child bags; scan it again to add more."
    assert acks[4]["parent"] == {"code": "SB10001", "children": 1, "status": "pending"}
    assert acks[5] == acks[4]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("not json", "JSON objects"),
        ("[" * 30_000, "not valid JSON"),
        ('{"a":' * 9 + "1" + "}" * 9, "nested more than 8 levels"),
        (b'{"type": "ping", "note": "\xff"}', "not UTF-8"),
        ('{"type": {}}', "JSON objects with a 'type'"),
        ("[1, 2]", "JSON objects"),
        ('{"type": "launch"}', "Unknown message type"),
        ('{"type": "scan", "code": "SB10001", "as": "parent"}', "needs an 'id'"),
        ('{"type": "scan", "id": "x", "code": "SB10001", "as": "box"}', "'parent' or 'child'"),
        ('{"type": "hello", "last_event_id": 0}', "must be the first message"),
    ],
)
async def test_malformed_messages_get_an_error_and_the_socket_stays_open(
    app, engine, message, expected
):
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        await _receive_until(ws, "welcome")
        await ws.send(message)
        error = await _receive_until(ws, "error")
        assert expected in error["message"]
        await ws.send(json.dumps({"type": "ping"}))
        assert (await _receive_until(ws, "pong"))["type"] == "pong"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM scan"))).scalar_one() == 0


async def test_a_scan_that_fails_unexpectedly_gets_an_error_and_the_socket_stays_open(
    app, engine, monkeypatch: pytest.MonkeyPatch
):
    async def broken(*args: object) -> None:
        raise ZeroDivisionError("a bug nobody foresaw")

    monkeypatch.setattr(scans, "scan_parent", broken)
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        await _receive_until(ws, "welcome")
        await ws.send(json.dumps({"type": "scan", "id": "p", "code": "SB10001", "as": "parent"}))
        error = await _receive_until(ws, "error")
        await ws.send(
            json.dumps(
                {"type": "scan", "id": "c", "code": "KID01", "as": "child", "parent": "SB10001"}
            )
        )
        ack = await _receive_until(ws, "ack")
    assert error == {
        "type": "error",
        "id": "p",
        "message": "Not saved: something went wrong on our side. Send it again.",
    }
    assert (ack["id"], ack["error"]) == ("c", "PARENT_NOT_FOUND")


async def test_an_unreadable_first_message_gets_the_welcome_then_an_error(app, engine):
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws") as ws:
        await ws.send("[" * 30_000)
        welcome = await _receive_until(ws, "welcome")
        error = await _receive_until(ws, "error")
        await ws.send(json.dumps({"type": "ping"}))
        assert (await _receive_until(ws, "pong"))["type"] == "pong"
    assert welcome["role"] == "dispatcher"
    assert "not valid JSON" in error["message"]


async def test_a_reconnecting_client_gets_exactly_what_it_missed_in_order(app, engine):
    runtime(app.app).quotas.burst = 100  # 50 scans back to back: a replayed offline queue
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        start = (await _receive_until(ws, "welcome"))["last_event_id"]
    other = app.test_client()
    await sign_in(other, "ravi", "Secret-pass1")
    token = await _csrf(other)
    for i in range(50):
        parent = "SB20001" if i < 25 else "SB20002"
        body = (
            {"id": f"s-{i}", "code": parent, "as": "parent"}
            if i % 25 == 0
            else {"id": f"s-{i}", "code": f"KID{i:03d}", "as": "child", "parent": parent}
        )
        response = await other.post("/api/v1/scans", json=body, headers={"X-CSRF-Token": token})
        assert (await response.get_json())["outcome"] == "ok"
    async with engine.connect() as conn:
        expected = (
            (
                await conn.execute(
                    text("SELECT id FROM event WHERE id > :s ORDER BY id"), {"s": start}
                )
            )
            .scalars()
            .all()
        )
    assert len(expected) == 50
    await asyncio.sleep(0.2)
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "last_event_id": start}))
        await _receive_until(ws, "welcome")
        seen: list[int] = []
        async with asyncio.timeout(3):
            while len(seen) < 50:
                message = json.loads(await ws.receive())
                if message["type"] == "events":
                    seen += [e["id"] for e in message["events"]]
    assert seen == expected


async def _csrf(client) -> str:
    import re

    page = await (await client.get("/")).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


async def test_a_display_sees_scans_made_by_a_dispatcher_in_its_area(app, engine):
    admin = app.test_client()
    await sign_in(admin, "admin", ADMIN_PASSWORD)
    dispatcher = await _dispatcher_client(app, engine)
    async with admin.websocket("/ws?view=wall") as wall, dispatcher.websocket("/ws") as scanner:
        await wall.send(json.dumps({"type": "hello"}))
        await scanner.send(json.dumps({"type": "hello"}))
        await _receive_until(wall, "welcome")
        await _receive_until(scanner, "welcome")
        await scanner.send(
            json.dumps({"type": "scan", "id": "p", "code": "SB30001", "as": "parent"})
        )
        events = await _receive_until(wall, "events")
        assert events["events"][0]["data"]["parent"]["code"] == "SB30001"
        counters = await _receive_until(wall, "counters")
        assert counters["areas"]["jaipur"]["parents"] == 1


async def test_a_wall_socket_closes_once_its_display_link_is_revoked(app, engine, monkeypatch):
    from quart.testing.connections import WebsocketDisconnectError

    from traitortrack.services import people
    from traitortrack.web import ws as ws_module

    monkeypatch.setattr(ws_module, "SESSION_CHECK_S", 0.05)
    boss = await make_actor(engine, Role.ADMIN, name="boss")
    made = await people.create_display_link(engine, boss, "Gate TV", ["jaipur"])
    link_id = await _value(engine, "SELECT id FROM display_link")
    client = app.test_client()
    assert (await client.get(f"/display/{made.token}")).status_code == 302
    async with client.websocket("/ws?view=wall") as wall:
        await wall.send(json.dumps({"type": "hello"}))
        assert (await _receive_until(wall, "welcome"))["role"] == "display"
        await people.revoke_display_link(engine, boss, link_id)
        with pytest.raises(WebsocketDisconnectError):
            async with asyncio.timeout(3):
                while True:
                    await wall.receive()


async def _value(engine, sql: str):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def _scan(ws, scan_id: str, code: str, parent: str | None = None) -> dict:
    message = {"type": "scan", "id": scan_id, "code": code, "as": "child" if parent else "parent"}
    await ws.send(json.dumps(message | ({"parent": parent} if parent else {})))
    return await _receive_until(ws, "ack")


async def test_a_scanner_is_sent_what_others_do_to_its_parent_and_nothing_else_of_its_area(
    app, engine
):
    ravi = await _dispatcher_client(app, engine, "ravi")
    sita = await _dispatcher_client(app, engine, "sita")
    async with ravi.websocket("/ws?view=scanner") as mine, sita.websocket("/ws") as theirs:
        for ws in (mine, theirs):
            await ws.send(json.dumps({"type": "hello", "last_event_id": None}))
            await _receive_until(ws, "welcome")
        assert (await _scan(mine, "r1", "SB10001"))["outcome"] == "ok"
        await _scan(mine, "r2", "MINE01", "SB10001")
        await _scan(theirs, "s1", "SB10002")
        await _scan(theirs, "s2", "OTHER1", "SB10002")  # same area, another parent
        await _scan(theirs, "s3", "THEIRS1", "SB10001")  # into ravi's parent

        seen = await _receive_until(mine, "events", seconds=10)

        assert [(e["kind"], e["data"]["child"]) for e in seen["events"]] == [
            ("child.linked", "THEIRS1")
        ]
        assert seen["events"][0]["data"]["parent"]["children"] == 2
        with pytest.raises(TimeoutError):
            await _receive_until(mine, "events", seconds=0.5)


async def test_a_scanner_that_names_its_parent_in_the_hello_follows_it_at_once(app, engine):
    ravi = await _dispatcher_client(app, engine, "ravi")
    sita = await _dispatcher_client(app, engine, "sita")
    async with sita.websocket("/ws") as theirs:
        await theirs.send(json.dumps({"type": "hello"}))
        await _receive_until(theirs, "welcome")
        await _scan(theirs, "s1", "SB10001")
        async with ravi.websocket("/ws?view=scanner") as mine:
            hello = {"type": "hello", "last_event_id": None, "parent": "sb10001"}
            await mine.send(json.dumps(hello))
            await _receive_until(mine, "welcome")
            await _scan(theirs, "s2", "THEIRS1", "SB10001")

            # (sita's parent scan may reach ravi too: it also concerns his parent.)
            seen = await _receive_until(mine, "events", seconds=10)
            while not any(e["kind"] == "child.linked" for e in seen["events"]):
                seen = await _receive_until(mine, "events", seconds=10)

    assert [e["data"]["child"] for e in seen["events"] if "child" in e["data"]] == ["THEIRS1"]


async def test_a_scanner_socket_closes_once_its_sessions_are_revoked(app, engine, monkeypatch):
    from quart.testing.connections import WebsocketDisconnectError

    from traitortrack.realtime import live
    from traitortrack.services import people
    from traitortrack.web import ws as ws_module

    monkeypatch.setattr(ws_module, "SESSION_CHECK_S", 0.2)
    boss = await make_actor(engine, Role.ADMIN, name="boss")
    client = await _dispatcher_client(app, engine)
    ravi = await _value(engine, "SELECT id FROM \"user\" WHERE username = 'ravi'")
    async with client.websocket("/ws?view=scanner") as scanner:
        await scanner.send(json.dumps({"type": "hello"}))
        await _receive_until(scanner, "welcome")
        await people.revoke_sessions(engine, boss, ravi)
        revoked = asyncio.get_running_loop().time()
        with pytest.raises(WebsocketDisconnectError):
            async with asyncio.timeout(3):
                while True:
                    await scanner.receive()
    # Within the check interval plus one sweep, not at some later tick.
    assert asyncio.get_running_loop().time() - revoked < 0.2 + live.SWEEP_EVERY_S + 1.5


async def test_an_open_socket_keeps_nothing_of_its_handshake_and_leaves_the_hub_when_closed(
    app, engine
):
    import gc

    from quart.ctx import WebsocketContext
    from quart.wrappers import Websocket

    from traitortrack.runtime import runtime

    hub = runtime(app.app).live.hub
    client = await _dispatcher_client(app, engine)
    async with client.websocket("/ws?view=scanner") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        await _receive_until(ws, "welcome")
        gc.collect()
        kept = [o for o in gc.get_objects() if isinstance(o, Websocket | WebsocketContext)]
        assert kept == []  # no request object, headers, cookies, session or context
        assert (await _scan(ws, "p", "SB40001"))["outcome"] == "ok"  # still served
        assert len(hub.connections) == 1
    async with asyncio.timeout(3):
        while hub.connections:  # noqa: ASYNC110  (the client went away: its life ends)
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _one_in_flight(engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, int]]:
    """After a committed event, transaction A holds event n uncommitted while B writes and
    commits n + 1: (A, n)."""
    async with engine.begin() as conn:
        await conn.execute(INSERT)
    async with engine.connect() as slow, engine.connect() as fast:
        late = (await slow.execute(INSERT)).scalar_one()
        assert (await fast.execute(INSERT)).scalar_one() == late + 1
        await fast.commit()
        yield slow, late


@pytest.mark.parametrize("bus", ["in-process", "redis"])
async def test_an_event_in_flight_when_a_worker_starts_reaches_its_sockets_once_committed(
    settings, engine, request, bus
):
    changes = {"redis_url": request.getfixturevalue("redis_server")} if bus == "redis" else {}
    await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    async with (
        _one_in_flight(engine) as (slow, late),
        app_for(settings, **changes).test_app() as app,
    ):
        client = app.test_client()
        await sign_in(client, "ravi", "Secret-pass1")
        async with client.websocket("/ws") as ws:
            await ws.send(json.dumps({"type": "hello", "last_event_id": None}))
            assert (await _receive_until(ws, "welcome"))["last_event_id"] > late
            await slow.commit()
            events = await _receive_until(ws, "events")
    assert [e["id"] for e in events["events"]] == [late]


@contextlib.asynccontextmanager
async def _started_with_one_in_flight(
    settings, engine: AsyncEngine
) -> AsyncIterator[tuple[AsyncConnection, int, object]]:
    """A worker started while event n was in flight and n + 1 committed, with ravi signed in:
    (n's transaction, n, ravi's client). The worker hands out n + 1 as a position."""
    await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    async with (
        _one_in_flight(engine) as (slow, late),
        app_for(settings).test_app() as app,
    ):
        client = app.test_client()
        await sign_in(client, "ravi", "Secret-pass1")
        yield slow, late, client


async def test_a_client_resuming_above_an_event_that_committed_after_it_left_gets_it(
    settings, engine
):
    async with _started_with_one_in_flight(settings, engine) as (slow, late, client):
        async with client.websocket("/ws") as ws:
            await ws.send(json.dumps({"type": "hello", "last_event_id": late - 1}))
            cursor = (await _receive_until(ws, "welcome"))["last_event_id"]
            assert [e["id"] for e in (await _receive_until(ws, "events"))["events"]] == [late + 1]
        hub = runtime(client.app).live.hub
        await slow.commit()
        async with asyncio.timeout(3):
            while hub.stats()["delivered"] < 1:  # noqa: ASYNC110  (the worker passed it on)
                await asyncio.sleep(0.01)
        async with client.websocket("/ws") as ws:
            await ws.send(json.dumps({"type": "hello", "last_event_id": cursor}))
            await _receive_until(ws, "welcome")
            replayed = await _receive_until(ws, "events")
    assert late in [e["id"] for e in replayed["events"]]


async def test_polling_the_api_from_its_cursor_returns_an_event_that_committed_below_it(
    settings, engine
):
    async with _started_with_one_in_flight(settings, engine) as (slow, late, client):
        first = await (await client.get(f"/api/v1/events?after={late - 1}")).get_json()
        assert [e["id"] for e in first["events"]] == [late + 1]
        await slow.commit()
        after = first["last_event_id"]
        second = await (await client.get(f"/api/v1/events?after={after}")).get_json()
    assert late in [e["id"] for e in second["events"]]
