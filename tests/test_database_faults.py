"""The scan path when PostgreSQL misbehaves: backends killed while idle or mid-batch, a parent
locked by someone else for long, one scan of a batch failing for a reason nobody foresaw.
Scans are answered (saved, refused as busy, or "not saved, send it again"), never hang, a
dead connection never goes back into the pool, and a scanner keeps its socket through a
restart (ARCHITECTURE.md, "Reliability")."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from quart.testing import WebsocketResponseError
from sqlalchemy.engine import make_url

from tests.db import new_id, value
from tests.live_cluster import PostgresCluster
from tests.web import ADMIN_PASSWORD, app_for, app_logs, csrf_from, sign_in
from traitortrack.config import Settings
from traitortrack.domain.outcomes import Outcome
from traitortrack.services import group_commit
from traitortrack.services.commands import LOCK_WAIT_S, NotSaved
from traitortrack.services.scans import link_child, scan_parent, undo_last_child

PARENT = "SB10001"
# A scan that cannot get its parent is answered within the lock wait and a little more.
BOUND_S = LOCK_WAIT_S + 0.5


def _same_lane(parent: str) -> str:
    """Another parent whose scans go to the same group-commit lane as ``parent``."""
    lane = hash(parent) % group_commit.LANES
    return next(
        code
        for n in range(20000, 30000)
        if hash(code := f"SB{n}") % group_commit.LANES == lane and code != parent
    )


@asynccontextmanager
async def _direct(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the test database, outside the app's pool."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _kill_backends(database_url: str, where: str = "true") -> int:
    """Terminate the app's backends on the test database (never anyone else's)."""
    async with _direct(database_url) as conn:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
        )


@asynccontextmanager
async def _parent_locked(database_url: str, code: str) -> AsyncIterator[None]:
    """Someone else (an admin's long transaction, a stuck client) holds the parent's row."""
    async with _direct(database_url) as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM bag WHERE code = $1 FOR UPDATE", code)
        yield


async def _wait_for_lock_waiter(database_url: str) -> None:
    async with asyncio.timeout(5), _direct(database_url) as conn:
        waiting = "SELECT count(*) FROM pg_stat_activity"
        waiting += " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        while not await conn.fetchval(waiting):  # noqa: ASYNC110  (polling another process)
            await asyncio.sleep(0.02)


async def test_scans_after_idle_backends_were_killed_all_succeed(engine, database_url, dispatcher):
    # Several pooled connections, all idle.
    first = await asyncio.gather(
        *(scan_parent(engine, dispatcher, new_id(), f"SB1000{n}") for n in range(6))
    )
    assert all(r.ok for r in first)
    assert await _kill_backends(database_url) >= 2

    parents = [await scan_parent(engine, dispatcher, new_id(), PARENT) for _ in range(6)]
    children = [
        await link_child(engine, dispatcher, new_id(), PARENT, f"KID{n:02d}") for n in range(12)
    ]

    assert [r.outcome for r in parents + children] == [Outcome.OK] * 18
    assert children[-1].message == "KID11 linked (12/30)"


async def test_a_backend_killed_mid_batch_loses_no_scan_and_the_next_scans_succeed(
    engine, database_url, dispatcher
):
    assert (await scan_parent(engine, dispatcher, new_id(), PARENT)).ok
    async with _parent_locked(database_url, PARENT):
        batch = asyncio.gather(
            *(link_child(engine, dispatcher, new_id(), PARENT, f"MID{n}") for n in range(3)),
            return_exceptions=True,
        )
        await _wait_for_lock_waiter(database_url)
        assert await _kill_backends(database_url, "wait_event_type = 'Lock'") == 1
    waiting = await batch
    after = [
        await link_child(engine, dispatcher, new_id(), PARENT, f"NEXT{n:02d}") for n in range(12)
    ]

    # Retried on a fresh connection (or, at worst, answered "not saved": sent again later).
    assert all(isinstance(r, NotSaved) or r.ok for r in waiting), waiting
    assert [r.outcome for r in after] == [Outcome.OK] * 12
    saved = sum(not isinstance(r, NotSaved) for r in waiting) + 12
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == saved


async def test_a_locked_parent_holds_up_no_other_parent_of_its_lane(
    engine, database_url, dispatcher
):
    other = _same_lane(PARENT)
    for code in (PARENT, other):
        assert (await scan_parent(engine, dispatcher, new_id(), code)).ok
    async with _parent_locked(database_url, PARENT):
        started = time.monotonic()
        blocked = asyncio.ensure_future(link_child(engine, dispatcher, new_id(), PARENT, "HELD1"))
        await asyncio.sleep(0.05)  # the blocked scan's batch is waiting for the lock
        free = await asyncio.wait_for(
            asyncio.gather(
                *(link_child(engine, dispatcher, new_id(), other, f"FREE{n}") for n in range(3))
            ),
            BOUND_S,
        )
        free_took = time.monotonic() - started
        busy = await asyncio.wait_for(blocked, BOUND_S)
        busy_took = time.monotonic() - started
        undo = await asyncio.wait_for(
            undo_last_child(engine, dispatcher, new_id(), PARENT), BOUND_S
        )

    assert [r.outcome for r in free] == [Outcome.OK] * 3, free
    assert free_took < BOUND_S and busy_took < BOUND_S
    assert (busy.outcome, busy.error) == (Outcome.REJECTED, "BUSY")
    assert busy.message == f"{PARENT} is busy (someone else is changing it); send the scan again."
    assert (undo.outcome, undo.error) == (Outcome.REJECTED, "BUSY")
    # Busy is not an answer to keep: the same scan sent again, once the parent is free, is saved.
    assert await value(engine, "SELECT count(*) FROM scan WHERE error = 'BUSY'") == 0


async def test_an_unforeseen_error_in_one_scan_of_a_batch_fails_only_that_scan(
    engine, dispatcher, monkeypatch: pytest.MonkeyPatch
):
    assert (await scan_parent(engine, dispatcher, new_id(), PARENT)).ok
    decide = group_commit._Batch.decide

    def decide_or_break(batch, index, scan):
        if scan.child == "BOOM1":
            raise ZeroDivisionError("a bug nobody foresaw")
        return decide(batch, index, scan)

    monkeypatch.setattr(group_commit._Batch, "decide", decide_or_break)

    results = await asyncio.gather(
        link_child(engine, dispatcher, new_id(), PARENT, "GOOD1"),
        link_child(engine, dispatcher, new_id(), PARENT, "BOOM1"),
        link_child(engine, dispatcher, new_id(), PARENT, "GOOD2"),
        return_exceptions=True,
    )

    assert [getattr(r, "message", None) for r in results] == [
        "GOOD1 linked (1/30)",
        None,
        "GOOD2 linked (2/30)",
    ]
    assert isinstance(results[1], NotSaved)


@pytest.fixture
async def private_postgres(settings: Settings) -> AsyncIterator[tuple[PostgresCluster, Settings]]:
    """A PostgreSQL of the test's own, to restart under the app."""
    server = PostgresCluster()
    try:
        server.create()
        server.start()
        yield server, settings.with_database(server.url())
    finally:
        server.remove()


async def _next(ws, kind: str) -> dict:
    async with asyncio.timeout(10):
        while (message := json.loads(await ws.receive()))["type"] != kind:
            pass
    return message


async def test_a_scanner_keeps_its_socket_through_a_database_restart(
    private_postgres, caplog: pytest.LogCaptureFixture
):
    server, settings = private_postgres
    scan = {"type": "scan", "id": "second", "code": "SB10002", "as": "parent"}
    running = app_for(settings)
    with app_logs(caplog):
        async with running.test_app() as app:
            client = app.test_client()
            await sign_in(client, "admin", ADMIN_PASSWORD)
            token = await csrf_from(client, "/scan")
            async with client.websocket("/ws") as ws:
                await ws.send(json.dumps({"type": "hello"}))
                await _next(ws, "welcome")
                await ws.send(json.dumps({**scan, "id": "first", "code": "SB10001"}))
                assert (await _next(ws, "ack"))["outcome"] == "ok"

                server.stop()
                await ws.send(json.dumps(scan))
                refused = await _next(ws, "error")
                with pytest.raises(WebsocketResponseError) as handshake:
                    async with client.websocket("/ws") as other:
                        await other.receive()
                over_http = await client.post(
                    "/api/v1/scans", json=scan, headers={"X-CSRF-Token": token}
                )
                server.start()
                await ws.send(json.dumps(scan))  # the scanner sends it again, on the same socket
                saved = await _next(ws, "ack")

    assert refused == {
        "type": "error",
        "id": "second",
        "message": "Not saved: the database is not answering. Send it again.",
    }
    assert handshake.value.response.status_code == 503
    assert handshake.value.response.headers["Retry-After"] == "5"
    assert (over_http.status_code, over_http.headers["Retry-After"]) == (503, "5")
    assert (saved["id"], saved["outcome"]) == ("second", "ok")
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
