from dataclasses import replace

import pytest
from sqlalchemy import text

from traitortrack import create_app
from traitortrack.security import verify_password


async def test_health_answers_without_touching_dependencies(settings):
    app = create_app(settings)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/health")
        assert response.status_code == 200
        assert await response.get_json() == {"status": "ok"}


async def test_ready_reports_the_database_and_the_in_process_bus(settings):
    app = create_app(settings)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/ready")
        assert response.status_code == 200
        assert (await response.get_json())["checks"] == {"database": "ok", "bus": "in-process"}


async def test_ready_checks_redis_when_it_is_configured(settings, redis_server):
    app = create_app(replace(settings, redis_url=redis_server))
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/ready")
        assert (await response.get_json())["checks"]["bus"] == "ok"


async def test_ready_is_unavailable_when_redis_is_unreachable(settings):
    app = create_app(replace(settings, redis_url="redis://127.0.0.1:1/0"))
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/ready")
        assert response.status_code == 503
        assert (await response.get_json())["checks"]["bus"] == "unavailable"


async def _admin_hash(engine) -> str:
    async with engine.connect() as conn:
        return (
            await conn.execute(text("SELECT password_hash FROM \"user\" WHERE username='admin'"))
        ).scalar_one()


async def test_first_start_creates_admin_and_prints_its_password_once(settings, engine, capsys):
    async with create_app(settings).test_app():
        pass
    printed = capsys.readouterr().out
    password = printed.split("password: ")[1].split()[0]
    assert verify_password(password, await _admin_hash(engine))
    async with create_app(settings).test_app():
        pass
    assert "password:" not in capsys.readouterr().out


async def test_admin_password_from_the_environment_resets_the_admin(settings, engine, capsys):
    async with create_app(settings).test_app():
        pass
    async with create_app(replace(settings, admin_password="Chosen-pass1")).test_app():
        pass
    assert verify_password("Chosen-pass1", await _admin_hash(engine))
    assert "Chosen-pass1" not in capsys.readouterr().out


@pytest.mark.parametrize("path", ["/health", "/ready"])
async def test_oversized_bodies_are_refused(settings, path):
    app = create_app(settings)
    async with app.test_app() as test_app:
        response = await test_app.test_client().post(path, data=b"x" * 100_000)
        assert response.status_code in {405, 413}


async def test_restarting_with_the_same_admin_password_keeps_admin_sessions(settings):
    from tests.web import app_for, sign_in

    first = app_for(settings)
    async with first.test_app() as test_app:
        client = test_app.test_client()
        await sign_in(client, "admin", "Admin-pass1")
        cookies = client.cookie_jar
    again = app_for(settings)
    async with again.test_app() as test_app:
        client = test_app.test_client()
        client.cookie_jar = cookies
        assert (await client.get("/")).status_code == 200
