import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import asyncpg
import pytest
from hypercorn.protocol import ws_stream
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests import services
from tests.browser import browser, web_server  # noqa: F401  (fixtures for browser tests)
from traitortrack import lean
from traitortrack.config import Settings, normalize_database_url
from traitortrack.db.engine import create_engine
from traitortrack.db.migrate import migrate
from traitortrack.domain.roles import Role
from traitortrack.services.commands import Actor
from traitortrack.services.users import create_user


def _database_url(server_url: str, name: str) -> str:
    return normalize_database_url(
        make_url(server_url).set(database=name).render_as_string(hide_password=False)
    )


def _asyncpg_dsn(server_url: str) -> str:
    return make_url(server_url).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    return services.postgres_url()


@pytest.fixture(scope="session")
def template_database(postgres_server: str) -> Iterator[str]:
    """One migrated database per test session; each test gets a copy of it."""
    name = f"tt_template_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(postgres_server))
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        engine = create_engine(Settings(database_url=_database_url(postgres_server, name)))
        await migrate(engine)
        await engine.dispose()

    async def drop() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(postgres_server))
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())


@pytest.fixture
async def database_url(postgres_server: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of the test's own."""
    name = f"tt_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_server))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield _database_url(postgres_server, name)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def settings(database_url: str, tmp_path, redis_prefix: str) -> Settings:
    # A Redis prefix of the test's own: apps of other tests (or other runs) on the same Redis
    # must never hear this test's event channel.
    return replace(
        Settings(),
        database_url=database_url,
        redis_prefix=redis_prefix,
        session_secret="test-secret-" + "x" * 40,
        data_dir=tmp_path,
        db_pool_size=20,
        db_max_overflow=30,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def redis_server() -> str:
    url = services.redis_url()
    if url is None:
        pytest.skip("NO REDIS: redis-server is not installed and none is running on :6379")
    return url


@pytest.fixture
def redis_prefix() -> str:
    return f"tt-test:{uuid.uuid4().hex[:12]}"


async def make_actor(
    engine: AsyncEngine, role: Role, area: str | None = None, name: str | None = None
) -> Actor:
    username = name or f"{role.value}_{uuid.uuid4().hex[:6]}"
    user_id = await create_user(engine, username, "Secret-pass1", role, area, rounds=4)
    return Actor(user_id, username, role, area)


@pytest.fixture
async def dispatcher(engine: AsyncEngine) -> Actor:
    return await make_actor(engine, Role.DISPATCHER, "jaipur")


@pytest.fixture
async def admin(engine: AsyncEngine) -> Actor:
    return await make_actor(engine, Role.ADMIN)


@pytest.fixture
async def biller(engine: AsyncEngine) -> Actor:
    return await make_actor(engine, Role.BILLER)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[object]:
    """The app with its start-up hooks run (``admin`` gets tests.web.ADMIN_PASSWORD)."""
    from tests.web import app_for

    async with app_for(settings).test_app() as test_app:
        yield test_app


@pytest.fixture
async def clocked_app(settings: Settings) -> AsyncIterator[object]:
    """The app with its start-up hooks run and a clock the test moves (``clock``)."""
    from tests.web import Clock, app_for
    from traitortrack.runtime import runtime

    app = app_for(settings)
    async with app.test_app() as test_app:
        runtime(app).clock = Clock()
        yield test_app


@pytest.fixture
def clock(clocked_app):
    from traitortrack.runtime import runtime

    return runtime(clocked_app.app).clock


@pytest.fixture
def restore_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test installs into Hypercorn's modules is put back afterwards."""
    for owner, name, *_ in lean.REPLACEMENTS:
        monkeypatch.setattr(owner, name, getattr(owner, name))
    monkeypatch.setattr(ws_stream, "PerMessageDeflate", ws_stream.PerMessageDeflate)
