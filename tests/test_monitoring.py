"""Admins' live system health, /metrics, /api/v1/stats, the slow-query log, structured logs."""

import asyncio
import io
import json
import logging
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from tests.conftest import make_actor
from tests.web import ADMIN_PASSWORD, app_for, csrf_from, sign_in
from traitortrack.domain.roles import Role
from traitortrack.logs import JsonFormatter
from traitortrack.runtime import runtime
from traitortrack.services import people

SCRAPE_TOKEN = "scrape-" + "t" * 40


@pytest.fixture
async def app(settings):
    app = app_for(settings, metrics_token=SCRAPE_TOKEN, slow_query_ms=50.0)
    async with app.test_app() as test_app:
        yield test_app


async def _signed_in(app, engine, role: Role, area: str | None = "jaipur"):
    client = app.test_client()
    if role == Role.ADMIN:
        await sign_in(client, "admin", ADMIN_PASSWORD)
    else:
        name = f"{role.value}_{uuid.uuid4().hex[:6]}"
        await make_actor(engine, role, area, name=name)
        await sign_in(client, name, "Secret-pass1")
    return client


def _metric(body: str, name: str, labels: str = "", default: float | None = None) -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else r"(?:\{\})?")
    found = re.search(rf"^{pattern} ([0-9.e+-]+)$", body, re.MULTILINE)
    if found is None and default is not None:
        return default  # a labelled series appears with its first count
    assert found, f"{name}{{{labels}}} not in /metrics"
    return float(found.group(1))


async def _scan(client, token: str, code: str, parent: str | None = None) -> dict:
    body = {"id": str(uuid.uuid4()), "code": code}
    body |= {"as": "child", "parent": parent} if parent else {"as": "parent"}
    response = await client.post("/api/v1/scans", json=body, headers={"X-CSRF-Token": token})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def test_metrics_are_for_admins_or_a_scraper_with_the_token(app, engine):
    anonymous = app.test_client()
    assert (await anonymous.get("/metrics")).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await anonymous.get("/metrics", headers=wrong)).status_code == 401
    supervisor = await _signed_in(app, engine, Role.SUPERVISOR)
    assert (await supervisor.get("/metrics")).status_code == 403

    scraper = await anonymous.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert scraper.status_code == 200
    assert scraper.content_type.startswith("text/plain")
    admin = await _signed_in(app, engine, Role.ADMIN)
    body = await (await admin.get("/metrics")).get_data(as_text=True)
    for name in (
        "traitortrack_db_pool_checked_out",
        "traitortrack_clients",
        "traitortrack_bus_up",
        "traitortrack_ack_latency_seconds_bucket",
        "traitortrack_fanout_lag_seconds_bucket",
        "traitortrack_slow_queries_total",
        "traitortrack_bus_reconnects_total",
    ):
        assert f"\n{name}" in body, name


async def test_a_token_is_not_accepted_when_none_is_configured(settings):
    app = app_for(settings)  # no METRICS_TOKEN
    async with app.test_app() as test_app:
        empty = {"Authorization": "Bearer "}
        assert (await test_app.test_client().get("/metrics", headers=empty)).status_code == 401


async def test_pool_gauges_move_when_connections_are_checked_out(app, engine):
    admin = await _signed_in(app, engine, Role.ADMIN)

    async def checked_out() -> float:
        body = await (await admin.get("/metrics")).get_data(as_text=True)
        return _metric(body, "traitortrack_db_pool_checked_out")

    state = runtime(app.app)
    before = await checked_out()
    held = [await state.engine.connect() for _ in range(4)]
    try:
        assert await checked_out() >= before + 4
        await state.monitor.tick()
        pool = state.monitor.latest["pool"]
        assert pool["checked_out"] >= 4
        assert pool["capacity"] == state.settings.db_pool_size + state.settings.db_max_overflow
        assert pool["level"] == "ok"  # 4 of 50 is far from 70 %
    finally:
        for conn in held:
            await conn.close()
    assert await checked_out() <= before


async def test_pool_usage_levels_warn_at_70_85_and_95_percent():
    from traitortrack.db.gauges import usage_level

    assert [usage_level(p) for p in (0, 69.9, 70, 84.9, 85, 94.9, 95, 100)] == [
        "ok", "ok", "warning", "warning", "high", "high", "critical", "critical",
    ]  # fmt: skip


async def test_a_deliberately_slow_statement_appears_in_the_slow_query_list(app, engine):
    state = runtime(app.app)
    marker = f"slow_{uuid.uuid4().hex[:8]}"
    # Through SQLAlchemy, and through asyncpg directly as the scan path does: each counted once.
    async with state.engine.connect() as conn:
        await conn.execute(text(f"SELECT pg_sleep(0.08) AS {marker}"))
        await conn.execute(text(f"SELECT 1 AS {marker}_fast"))
        raw = (await conn.get_raw_connection()).driver_connection
        await raw.fetchval(f"SELECT pg_sleep($1) AS {marker}", 0.08)
    await state.monitor.tick()

    admin = await _signed_in(app, engine, Role.ADMIN)
    response = await admin.get("/system_health/history")
    assert response.status_code == 200
    slow = (await response.get_json())["latest"]["slow_queries"]
    ours = [s for s in slow if marker in s["shape"]]
    assert [s["shape"] for s in ours] == [f"SELECT pg_sleep(?) AS {marker}"]
    assert ours[0]["count"] == 2
    assert ours[0]["max_ms"] >= 80
    assert not any(f"{marker}_fast" in s["shape"] for s in slow)


async def test_the_metrics_socket_streams_the_merged_view_to_admins_only(app, engine):
    admin = await _signed_in(app, engine, Role.ADMIN)
    async with admin.websocket("/ws?view=metrics") as ws, asyncio.timeout(5):
        await ws.send(json.dumps({"type": "hello"}))
        while True:
            frame = json.loads(await ws.receive())
            # Samples are a second apart: the first may predate this socket.
            if frame["type"] == "metrics" and frame["system"]["clients"].get("admin"):
                break
    system = frame["system"]
    assert system["clients"]["admin"] >= 1
    assert {"pool", "ack_ms", "fanout_ms", "bus", "errors", "slow_queries", "workers"} <= set(
        system
    )
    assert system["bus"] == {"kind": "in-process", "up": True, "reconnects": 0, "leader": None}


async def test_scans_are_counted_by_outcome_with_their_ack_latency(app, engine):
    dispatcher = await _signed_in(app, engine, Role.DISPATCHER)
    admin = await _signed_in(app, engine, Role.ADMIN)
    body = await (await admin.get("/metrics")).get_data(as_text=True)
    ok_before = _metric(body, "traitortrack_scans_total", 'kind="parent",outcome="ok"', 0)
    acks_before = _metric(body, "traitortrack_ack_latency_seconds_count")

    token = await csrf_from(dispatcher, "/")
    await _scan(dispatcher, token, "SB40001")
    rejected = await _scan(dispatcher, token, "SB40001", parent="SB40001")
    assert rejected["outcome"] == "rejected"

    body = await (await admin.get("/metrics")).get_data(as_text=True)
    assert _metric(body, "traitortrack_scans_total", 'kind="parent",outcome="ok"') == ok_before + 1
    assert _metric(body, "traitortrack_scans_total", 'kind="child",outcome="rejected"') >= 1
    assert _metric(body, "traitortrack_ack_latency_seconds_count") == acks_before + 2
    state = runtime(app.app)
    await state.monitor.tick()
    assert state.monitor.latest["ack_ms"]["p50"] is not None
    assert state.monitor.latest["scans_last_minute"] >= 2


async def test_the_history_grows_one_point_per_sample_with_every_series(app, engine):
    state = runtime(app.app)
    await state.monitor.tick()
    await state.monitor.tick()
    admin = await _signed_in(app, engine, Role.ADMIN)
    history = (await (await admin.get("/system_health/history")).get_json())["history"]
    assert len(history["t"]) >= 2
    assert {len(v) for v in history["series"].values()} == {len(history["t"])}
    assert "pool_usage_pct" in history["series"]


async def test_the_health_page_draws_from_our_own_scripts(app, engine):
    admin = await _signed_in(app, engine, Role.ADMIN)
    response = await admin.get("/system_health")
    html = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert "/static/js/metrics.js" in html
    assert "<script>" not in html and "style=" not in html
    assert "https://" not in response.headers["Content-Security-Policy"]
    home = await (await admin.get("/")).get_data(as_text=True)
    assert 'href="/system_health"' in home and 'href="/wall"' in home


async def test_the_health_page_names_accounts_whose_sign_in_is_paused(app, engine):
    biller = await _signed_in(app, engine, Role.BILLER)
    name = (await (await biller.get("/api/v1/session")).get_json())["username"]
    for _ in range(5):
        await sign_in(app.test_client(), name, "wrong", address="198.51.100.7")
    admin = await _signed_in(app, engine, Role.ADMIN)
    html = await (await admin.get("/system_health")).get_data(as_text=True)
    row = re.search(rf"<tr><td>{name}</td><td>(\d+)</td>", html)
    assert row is not None and row.group(1) == "1"
    assert f'href="/admin/audit?entity_id={name}"' in html


# /api/v1/stats --------------------------------------------------------------------------------


async def test_stats_come_from_the_hubs_counters_and_the_latest_scans(app, engine):
    dispatcher = await _signed_in(app, engine, Role.DISPATCHER)
    token = await csrf_from(dispatcher, "/")
    await _scan(dispatcher, token, "SB41001")
    await _scan(dispatcher, token, "KID41001", parent="SB41001")
    await _scan(dispatcher, token, "KID41002", parent="SB41001")
    state = runtime(app.app)
    await _wait_for_position(state)

    supervisor = await _signed_in(app, engine, Role.SUPERVISOR, area=None)
    stats = await (await supervisor.get("/api/v1/stats")).get_json()
    jaipur = stats["counters"]["areas"]["jaipur"]
    assert (jaipur["parents"], jaipur["children"]) == (1, 2)
    assert stats["per_minute"]["areas"]["jaipur"][-1] == 3
    assert len(stats["per_minute"]["areas"]["jaipur"]) == 60
    assert [e["kind"] for e in stats["feed"]] == ["parent.scanned", "child.linked", "child.linked"]
    assert stats["position"] == stats["feed"][-1]["id"]
    assert stats["bills"] == {"new": 0, "processing": 0, "completed": 0}
    assert {a["name"] for a in stats["areas"]} >= {"jaipur", "indore"}
    assert stats["version"]

    # A dispatcher elsewhere sees only their own area.
    other = await _signed_in(app, engine, Role.DISPATCHER, area="indore")
    theirs = await (await other.get("/api/v1/stats")).get_json()
    assert "jaipur" not in theirs["counters"]["areas"]
    assert theirs["feed"] == []
    assert [a["name"] for a in theirs["areas"]] == ["indore"]


async def _wait_for_position(state, seconds: float = 3.0) -> None:
    async with state.engine.connect() as conn:
        newest = (await conn.execute(text("SELECT max(id) FROM event"))).scalar_one()
    async with asyncio.timeout(seconds):
        while state.live.hub.position < newest:  # noqa: ASYNC110  (another task moves it)
            await asyncio.sleep(0.02)


async def test_a_display_link_watches_its_areas_until_it_is_revoked(app, engine):
    admin_actor = await make_actor(engine, Role.ADMIN)
    done = await people.create_display_link(engine, admin_actor, "Jaipur TV", ["jaipur"])
    assert done.ok and done.token
    tv = app.test_client()
    opened = await tv.get(f"/display/{done.token}")
    assert opened.status_code == 302 and opened.headers["Location"] == "/wall"

    wall = await tv.get("/wall")
    html = await wall.get_data(as_text=True)
    assert wall.status_code == 200
    assert 'data-display="link"' in html and "Jaipur TV" in html
    stats = await tv.get("/api/v1/stats")
    assert stats.status_code == 200
    assert [a["name"] for a in (await stats.get_json())["areas"]] == ["jaipur"]
    assert (await tv.get("/metrics")).status_code == 401  # a display is not an admin

    link = next(x for x in await people.list_display_links(engine) if x.label == "Jaipur TV")
    assert (await people.revoke_display_link(engine, admin_actor, link.id)).ok
    assert (await tv.get("/api/v1/stats")).status_code == 401
    refused = await tv.get("/wall")
    assert refused.status_code == 302 and refused.headers["Location"].startswith("/login")


async def test_the_wall_is_for_supervisors_and_admins(app, engine):
    supervisor = await _signed_in(app, engine, Role.SUPERVISOR, area=None)
    page = await supervisor.get("/wall")
    html = await page.get_data(as_text=True)
    assert page.status_code == 200
    assert "/static/js/wall.js" in html and 'data-display="person"' in html
    biller = await _signed_in(app, engine, Role.BILLER, area=None)
    assert (await biller.get("/wall")).status_code == 403


# Structured logs ------------------------------------------------------------------------------


async def test_log_lines_and_audit_rows_carry_the_request_id(app, engine):
    handler = logging.getLogger().handlers[0]
    formatter, written = handler.formatter, io.StringIO()
    handler.setFormatter(JsonFormatter())  # as in production
    stream = handler.setStream(written)
    try:
        await _sign_in_then_get_refused(app, engine, written)
    finally:
        handler.setStream(stream)
        handler.setFormatter(formatter)


async def _sign_in_then_get_refused(app, engine, written: io.StringIO) -> None:
    client = app.test_client()
    token = await csrf_from(client)
    response = await client.post(
        "/login",
        form={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token},
        headers={"X-Request-ID": "req-login-0001"},
    )
    ours = response.headers["X-Request-ID"]
    assert ours != "req-login-0001"  # the client's id is never taken as ours
    async with engine.connect() as conn:
        audited = (
            await conn.execute(text("SELECT request_id FROM audit WHERE action LIKE 'login%'"))
        ).scalars().all()  # fmt: skip
    assert audited == [ours], "the sign-in was not audited with our request id"

    refused = await client.post("/admin/areas", headers={"X-Request-ID": "req-csrf-0002"})
    assert refused.status_code == 403
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    csrf = [line for line in lines if line["msg"] == "csrf rejected"]
    assert csrf and csrf[0]["request_id"] == refused.headers["X-Request-ID"]
    assert csrf[0]["client_request_id"] == "req-csrf-0002"
    assert csrf[0]["level"] == "warning" and csrf[0]["endpoint"] == "admin.add_area"


async def test_a_server_error_counts_in_the_error_rate(settings):
    app = app_for(settings)

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("deliberate")

    boom.access = ("public", frozenset())  # type: ignore[attr-defined]
    async with app.test_app() as test_app:
        state = runtime(test_app.app)
        await state.monitor.tick()
        errors_before = state.monitor.latest["errors"]
        assert (await test_app.test_client().get("/boom")).status_code == 500
        await state.monitor.tick()
        errors = state.monitor.latest["errors"]
    assert errors["server_errors_last_minute"] == errors_before["server_errors_last_minute"] + 1
    assert errors["logged_last_minute"] >= errors_before["logged_last_minute"] + 1
    assert errors["error_rate_pct"] > 0


def test_statement_shapes_group_runs_of_the_same_statement():
    from traitortrack.db.slow_queries import statement_shape

    assert statement_shape("SELECT * FROM bag WHERE code = 'SB00001' AND id IN (1, 2, 3)") == (
        "SELECT * FROM bag WHERE code = ? AND id IN (?, ...)"
    )
    assert statement_shape("SELECT  $1::int -- why\n, 2.5") == "SELECT ?::int , ?"


def test_latency_windows_merge_across_workers_and_forget_after_a_minute():
    from traitortrack.monitoring.windows import LatencyWindow, merge, percentiles

    now = [1_000.0]
    a, b = LatencyWindow(lambda: now[0]), LatencyWindow(lambda: now[0])
    for ms in range(1, 101):
        a.observe(ms)
    b.observe(5_000)
    merged = percentiles(merge([a.buckets(), json.loads(json.dumps(b.buckets()))]), (0.5, 0.99))
    assert 45 <= merged["p50"] <= 55
    assert 90 <= merged["p99"] <= 110
    now[0] += 61
    assert a.summary() == {"p50": None, "p95": None, "p99": None}


def test_the_history_keeps_the_last_hour_oldest_first_in_memory_allocated_once():
    import tracemalloc

    from traitortrack.monitoring.windows import History

    history = History(("scans", "p99"), points=4)
    assert history.columns() == {"t": [], "series": {"scans": [], "p99": []}}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for second in range(10):
            history.append(float(second), [second * 10, None if second % 2 else second / 2])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 512, f"appending grew memory by {grown} bytes"
    assert len(history) == 4
    assert history.columns() == {
        "t": [6.0, 7.0, 8.0, 9.0],
        "series": {"scans": [60.0, 70.0, 80.0, 90.0], "p99": [3.0, None, 4.0, None]},
    }


@pytest.mark.parametrize("production", [True])
def test_settings_read_the_scrape_token_from_the_environment(production):
    from traitortrack.config import Settings

    env = {"METRICS_TOKEN": "abc", "SESSION_SECRET": "s" * 40, "ADMIN_PASSWORD": "x"}
    env["TRAITORTRACK_ENV"] = "production" if production else "development"
    assert Settings.from_env(env).metrics_token == "abc"
    assert replace(Settings(), metrics_token=None).metrics_token is None


async def test_the_walls_statements_are_served_by_indexes(engine):
    from traitortrack.realtime.rates import _COUNT_LAST_HOUR, SCAN_KINDS
    from traitortrack.services.stats import _BILLS, _LATEST_SCANS, FEED_KINDS

    statements = [
        (_LATEST_SCANS, {"upto": 10**6, "lookback": 20_000, "kinds": FEED_KINDS,
                         "areas": ["jaipur"], "limit": 30}),
        (_BILLS, {}),
        (_COUNT_LAST_HOUR, {"since": datetime.now(UTC), "kinds": sorted(SCAN_KINDS)}),
    ]  # fmt: skip
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            plan = "\n".join(
                (await conn.execute(text("EXPLAIN " + statement.text), parameters)).scalars()
            )
            assert "Seq Scan" not in plan, plan
