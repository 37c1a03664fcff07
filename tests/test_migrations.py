import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from tests.conftest import _asyncpg_dsn, _database_url
from traitortrack.config import Settings
from traitortrack.db.engine import create_engine
from traitortrack.db.migrate import migrate
from traitortrack.db.models import Base


async def test_the_migrations_build_exactly_the_models_schema(engine):
    async with engine.connect() as conn:
        differences = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert differences == []


async def test_the_default_dispatch_areas_exist_after_migrating(engine):
    async with engine.connect() as conn:
        areas = (await conn.execute(text("SELECT name FROM area ORDER BY name"))).scalars().all()
    assert {"jaipur", "sri_ganganagar", "akola"} <= set(areas)
    assert len(areas) == 10


@pytest.fixture
async def empty_database_url(postgres_server) -> AsyncIterator[str]:
    """A database of the test's own with no schema at all."""
    name = f"tt_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(postgres_server, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_workers_starting_together_migrate_once_without_racing(empty_database_url):
    engines = [create_engine(Settings(database_url=empty_database_url)) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        async with engines[0].connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert len(version) == 1
    finally:
        for e in engines:
            await e.dispose()


async def test_partitioning_the_outbox_keeps_its_events_and_their_ids(empty_database_url):
    engine = create_engine(Settings(database_url=empty_database_url))
    everything = text("SELECT id, kind, area, payload, at, xid FROM event ORDER BY id")
    insert = text("INSERT INTO event (kind, payload) VALUES ('bill.created', '{}') RETURNING id")
    try:
        await migrate(engine, "0002")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO event (kind, area, payload) SELECT 'child.linked', 'jaipur',"
                    " jsonb_build_object('n', n) FROM generate_series(1, 1000) AS n"
                )
            )
            before = (await conn.execute(everything)).all()
        await migrate(engine)
        async with engine.begin() as conn:
            assert (await conn.execute(everything)).all() == before
            assert (await conn.execute(insert)).scalar_one() == 1001
            kind = await conn.execute(
                text("SELECT relkind::text FROM pg_class WHERE relname = 'event'")
            )
            assert kind.scalar_one() == "p"
    finally:
        await engine.dispose()
