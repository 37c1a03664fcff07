import asyncio
import re
from datetime import UTC, datetime, timedelta, tzinfo

import pyotp
import pytest
import quart_rate_limiter
from sqlalchemy import text

from tests.conftest import make_actor
from tests.web import ADMIN_PASSWORD, alert_text, app_for, csrf_from, sign_in
from traitortrack.domain.roles import Role
from traitortrack.security import hash_password, password_problems, verify_password
from traitortrack.services import accounts


@pytest.fixture
def app(clocked_app):
    """The app, with a clock the tests move (lockouts, session expiry, TOTP steps)."""
    return clocked_app


async def _audit_actions(engine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT action FROM audit ORDER BY id"))
        return [r.action for r in rows]


async def test_the_login_form_carries_a_csrf_token_and_signing_in_sets_a_session(app):
    client = app.test_client()
    page = await (await client.get("/login")).get_data(as_text=True)
    assert re.search(r'<input type="hidden" name="csrf_token" value="[^"]+">', page)
    response = await sign_in(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 302
    assert "tt_auth=" in response.headers.get("Set-Cookie", "")
    assert (await client.get("/")).status_code == 200


async def test_pages_send_anonymous_people_to_the_login_form(app):
    response = await app.test_client().get("/account")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/account"


async def _pause_count(engine) -> int:
    async with engine.connect() as conn:
        query = "SELECT count(*) FROM sign_in_guard WHERE locked_until IS NOT NULL"
        return (await conn.execute(text(query))).scalar_one()


async def test_unknown_user_wrong_password_paused_address_and_inactive_account_get_one_answer(
    app, engine, monkeypatch
):
    import bcrypt

    await make_actor(engine, Role.BILLER, name="gone")
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE \"user\" SET active = false WHERE username = 'gone'"))
    for _ in range(5):
        await sign_in(app.test_client(), "admin", "wrong", address="198.51.100.7")
    checks = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda *a: checks.append(1) or real(*a))
    answers = set()
    for username, password, address in [
        ("nobody-here", "whatever", "192.0.2.1"),
        ("admin", "wrong", "192.0.2.1"),
        ("admin", ADMIN_PASSWORD, "198.51.100.7"),
        ("gone", "Secret-pass1", "192.0.2.1"),
    ]:
        checks.clear()
        response = await sign_in(app.test_client(), username, password, address=address)
        assert response.status_code == 401, username
        assert checks == [1], username  # the same bcrypt work, so the same time
        answers.add(alert_text(await response.get_data(as_text=True)))
    assert answers == {accounts.SIGN_IN_REFUSED}
    assert "attempts left" not in accounts.SIGN_IN_REFUSED
    assert "locked" not in accounts.SIGN_IN_REFUSED


async def test_five_failures_pause_sign_in_from_that_address_only_for_fifteen_minutes(
    app, clock, engine
):
    for _ in range(5):
        await sign_in(app.test_client(), "admin", "wrong", address="198.51.100.7")
    paused = await sign_in(app.test_client(), "admin", ADMIN_PASSWORD, address="198.51.100.7")
    assert paused.status_code == 401
    elsewhere = await sign_in(app.test_client(), "admin", ADMIN_PASSWORD, address="192.0.2.1")
    assert elsewhere.status_code == 302
    clock.advance(minutes=15, seconds=1)
    again = await sign_in(app.test_client(), "admin", ADMIN_PASSWORD, address="198.51.100.7")
    assert again.status_code == 302
    actions = await _audit_actions(engine)
    assert actions.count("login.failed") == 4
    assert actions.count("login.locked") == 1
    assert actions.count("login.while_locked") == 1
    assert actions.count("login.password_ok") == 2


async def test_the_client_address_is_kept_only_as_a_keyed_hash(app, engine):
    for _ in range(2):
        await sign_in(app.test_client(), "admin", "wrong", address="203.0.113.77")
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM sign_in_guard"))).all()
        ips = (await conn.execute(text("SELECT DISTINCT ip FROM audit WHERE ip IS NOT NULL"))).all()
    assert len(rows) == 1
    assert "203.0.113" not in repr(rows)
    assert ips == [("203.0.113.0",)]


async def test_an_account_paused_from_ten_addresses_gives_any_other_address_one_try(
    app, clock, engine
):
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO sign_in_guard (user_id, client, failures, last_failure_at,"
                " locked_until) SELECT id, 'elsewhere-' || n, 0, :now, :until"
                " FROM \"user\", generate_series(1, 10) AS n WHERE username = 'admin'"
            ),
            {"now": clock.now, "until": clock.now + timedelta(minutes=15)},
        )
    await sign_in(app.test_client(), "admin", "wrong", address="192.0.2.1")
    refused = await sign_in(app.test_client(), "admin", ADMIN_PASSWORD, address="192.0.2.1")
    assert refused.status_code == 401
    fresh = await sign_in(app.test_client(), "admin", ADMIN_PASSWORD, address="192.0.2.2")
    assert fresh.status_code == 302


async def test_a_missing_csrf_token_is_refused_and_changes_nothing(app, engine):
    client = app.test_client()
    await sign_in(client, "admin", ADMIN_PASSWORD)
    response = await client.post(
        "/account/password",
        form={
            "current_password": ADMIN_PASSWORD,
            "new_password": "Other-pass2",
            "repeat_password": "Other-pass2",
        },
    )
    assert response.status_code == 403
    assert "Reload the page" in await response.get_data(as_text=True)
    async with engine.connect() as conn:
        hashed = (
            await conn.execute(text("SELECT password_hash FROM \"user\" WHERE username='admin'"))
        ).scalar_one()
    assert verify_password(ADMIN_PASSWORD, hashed)


async def test_a_json_write_with_a_wrong_csrf_header_gets_a_json_403(app):
    client = app.test_client()
    await sign_in(client, "admin", ADMIN_PASSWORD)
    response = await client.post("/logout", headers={"X-CSRF-Token": "forged"}, json={})
    assert response.status_code == 403
    assert "nothing was changed" in (await response.get_json())["error"]


async def test_changing_the_password_signs_out_other_sessions_but_not_this_one(app):
    this, other = app.test_client(), app.test_client()
    await sign_in(this, "admin", ADMIN_PASSWORD)
    await sign_in(other, "admin", ADMIN_PASSWORD)
    token = await csrf_from(this, "/account")
    response = await this.post(
        "/account/password",
        form={
            "csrf_token": token,
            "current_password": ADMIN_PASSWORD,
            "new_password": "Fresh-pass2!",
            "repeat_password": "Fresh-pass2!",
        },
    )
    assert response.status_code == 200
    assert (await this.get("/")).status_code == 200
    assert (await other.get("/")).status_code == 302


async def test_admins_are_signed_out_after_thirty_idle_minutes(app, clock):
    client = app.test_client()
    await sign_in(client, "admin", ADMIN_PASSWORD)
    clock.advance(minutes=29)
    assert (await client.get("/")).status_code == 200
    clock.advance(minutes=29)
    assert (await client.get("/")).status_code == 200
    clock.advance(minutes=31)
    assert (await client.get("/")).status_code == 302


async def test_dispatchers_stay_signed_in_for_a_twelve_hour_shift(app, clock, engine):
    await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    client = app.test_client()
    await sign_in(client, "ravi", "Secret-pass1")
    clock.advance(hours=11, minutes=59)
    assert (await client.get("/")).status_code == 200
    clock.advance(minutes=2)
    assert (await client.get("/")).status_code == 302


async def _enrol_totp(client) -> tuple[str, list[str]]:
    token = await csrf_from(client, "/account")
    page = await (await client.post("/account/2fa/start", form={"csrf_token": token})).get_data(
        as_text=True
    )
    assert "<svg" in page
    secret = re.search(r"Enter this key: <code>([A-Z2-7]+)</code>", page).group(1)
    code = pyotp.TOTP(secret).now()
    done = await (
        await client.post("/account/2fa/confirm", form={"csrf_token": token, "totp": code})
    ).get_data(as_text=True)
    codes = re.findall(r"<li><code>([0-9a-f]{6}-[0-9a-f]{6})</code></li>", done)
    assert len(codes) == 10
    return secret, codes


async def _second_factor(client, code: str):
    token = await csrf_from(client, "/login/totp")
    return await client.post("/login/totp", form={"csrf_token": token, "totp": code})


async def test_an_admin_with_two_factor_needs_a_code_that_works_only_once(app, clock):
    client = app.test_client()
    await sign_in(client, "admin", ADMIN_PASSWORD)
    secret, _ = await _enrol_totp(client)
    clock.advance(seconds=60)
    fresh = app.test_client()
    first = await sign_in(fresh, "admin", ADMIN_PASSWORD)
    assert first.headers["Location"].startswith("/login/totp")
    assert (await fresh.get("/")).status_code == 302  # not signed in before the code
    code = pyotp.TOTP(secret).at(clock.now)
    assert (await _second_factor(fresh, code)).status_code == 302
    assert (await fresh.get("/")).status_code == 200
    replay = app.test_client()
    await sign_in(replay, "admin", ADMIN_PASSWORD)
    refused = await _second_factor(replay, code)
    assert refused.status_code == 401
    assert (await replay.get("/")).status_code == 302


async def test_a_recovery_code_signs_in_once(app, clock, engine):
    client = app.test_client()
    await sign_in(client, "admin", ADMIN_PASSWORD)
    _, codes = await _enrol_totp(client)
    for expected in (302, 401):
        other = app.test_client()
        await sign_in(other, "admin", ADMIN_PASSWORD)
        assert (await _second_factor(other, codes[0])).status_code == expected
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                text("SELECT cardinality(recovery_codes) FROM \"user\" WHERE username='admin'")
            )
        ).scalar_one()
    assert left == 9


def _wrong_code(secret: str, at: datetime) -> str:
    """A six-digit code that no time step near ``at`` accepts."""
    near = {pyotp.TOTP(secret).at(at + timedelta(seconds=30 * k)) for k in (-1, 0, 1)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in near)


async def _waiting_for_a_code(app) -> object:
    client = app.test_client()
    assert (await sign_in(client, "admin", ADMIN_PASSWORD)).status_code == 302
    return client


async def test_five_wrong_codes_pause_the_second_factor_even_for_the_right_code(app, clock, engine):
    enrolling = app.test_client()
    await sign_in(enrolling, "admin", ADMIN_PASSWORD)
    secret, recovery = await _enrol_totp(enrolling)
    clock.advance(seconds=60)
    client = await _waiting_for_a_code(app)
    for _ in range(5):
        wrong = await _second_factor(client, _wrong_code(secret, clock.now))
        assert wrong.status_code == 401
    right = await _second_factor(client, pyotp.TOTP(secret).at(clock.now))
    assert right.status_code == 401
    assert alert_text(await right.get_data(as_text=True)) == alert_text(
        await wrong.get_data(as_text=True)
    )
    assert (await _second_factor(client, recovery[0])).status_code == 401
    assert (await client.get("/")).status_code == 302
    clock.advance(minutes=15, seconds=1)
    later = await _waiting_for_a_code(app)
    assert (await _second_factor(later, pyotp.TOTP(secret).at(clock.now))).status_code == 302
    actions = await _audit_actions(engine)
    assert actions.count("2fa.failed") == 4
    assert actions.count("2fa.locked") == 1
    assert actions.count("2fa.while_locked") == 2


@pytest.mark.usefixtures("limiter_clock_held")
async def test_a_right_code_starts_the_count_of_wrong_codes_again(app, clock):
    enrolling = app.test_client()
    await sign_in(enrolling, "admin", ADMIN_PASSWORD)
    secret, _ = await _enrol_totp(enrolling)
    for _ in range(2):
        clock.advance(seconds=60)
        client = await _waiting_for_a_code(app)
        for _ in range(4):
            await _second_factor(client, _wrong_code(secret, clock.now))
        assert (await _second_factor(client, pyotp.TOTP(secret).at(clock.now))).status_code == 302


@pytest.fixture
def limiter_clock_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter refills one try every 6 s: on a busy machine a dozen sign-ins take that
    long, so its clock stands still for these tests."""
    frozen = datetime.now(UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:
            return frozen

    monkeypatch.setattr(quart_rate_limiter, "datetime", Frozen)


@pytest.mark.usefixtures("limiter_clock_held")
async def test_sign_in_is_rate_limited_per_account_with_a_retry_time(app):
    statuses = []
    for _ in range(12):
        statuses.append((await sign_in(app.test_client(), "ghost", "x")).status_code)
    assert statuses[:10] == [401] * 10
    assert statuses[10] == 429
    limited = await sign_in(app.test_client(), "ghost", "x")
    assert int(limited.headers["Retry-After"]) > 0
    assert "Try again in" in await limited.get_data(as_text=True)


@pytest.mark.usefixtures("limiter_clock_held")
async def test_rate_limits_are_shared_by_two_app_instances_through_redis(
    settings, redis_server, redis_prefix
):
    first = app_for(settings, redis_url=redis_server, redis_prefix=redis_prefix)
    second = app_for(settings, redis_url=redis_server, redis_prefix=redis_prefix)
    async with first.test_app() as a, second.test_app() as b:
        statuses = []
        for i in range(12):
            client = (a if i % 2 else b).test_client()
            statuses.append((await sign_in(client, "shared", "x")).status_code)
    assert statuses.count(429) == 2


@pytest.mark.parametrize(
    "path", ["/login", "/health", "/", "/no-such-page", "/static/css/app.css", "/account"]
)
async def test_security_headers_are_on_every_response(app, path):
    response = await app.test_client().get(path)
    for header in (
        "Content-Security-Policy",
        "X-Frame-Options",
        "X-Content-Type-Options",
        "Referrer-Policy",
        "Permissions-Policy",
    ):
        assert header in response.headers, (path, header)
    assert "Strict-Transport-Security" not in response.headers  # development is plain http
    assert "http" not in response.headers["Content-Security-Policy"]


async def test_production_sends_hsts_and_secure_cookies(settings):
    app = app_for(settings, env="production")
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get("/login")
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert "Secure" in response.headers["Set-Cookie"]


def test_passwords_longer_than_72_bytes_are_never_truncated():
    base = "A" * 72
    hashed = hash_password(base + "-first", rounds=4)
    assert verify_password(base + "-first", hashed)
    assert not verify_password(base + "-other", hashed)
    assert not verify_password(base, hashed)


@pytest.mark.parametrize("filler", ["é", "€", "😀"])
def test_multibyte_passwords_near_the_bcrypt_boundary_keep_every_byte(filler):
    password = filler * (80 // len(filler.encode()))
    hashed = hash_password(password, rounds=4)
    assert verify_password(password, hashed)
    assert not verify_password(password[:-1] + "x", hashed)


@pytest.mark.parametrize(
    ("password", "missing"),
    [
        ("Short1!", ["at least 8 characters"]),
        ("alllower1!", ["an upper-case letter"]),
        ("ALLUPPER1!", ["a lower-case letter"]),
        ("NoDigits!!", ["a digit"]),
        ("NoSymbol12", ["a symbol"]),
        ("Good-pass1", []),
    ],
)
def test_new_passwords_follow_the_complexity_rules(password, missing):
    assert password_problems(password) == missing


async def test_concurrent_wrong_passwords_cannot_skip_the_pause(app, engine):
    await asyncio.gather(*(sign_in(app.test_client(), "admin", "wrong") for _ in range(5)))
    assert await _pause_count(engine) == 1


async def test_signing_in_still_works_while_redis_is_unreachable(settings):
    app = app_for(settings, redis_url="redis://127.0.0.1:1/0")
    async with app.test_app() as test_app:
        response = await sign_in(test_app.test_client(), "admin", ADMIN_PASSWORD)
        assert response.status_code == 302
