import asyncio
import uuid

import asyncpg
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


async def test_workers_starting_together_migrate_once_without_racing(postgres_server):
    name = f"tt_race_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server))
    await admin.execute(f'CREATE DATABASE "{name}"')
    engines = [
        create_engine(Settings(database_url=_database_url(postgres_server, name))) for _ in range(4)
    ]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        async with engines[0].connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert len(version) == 1
    finally:
        for e in engines:
            await e.dispose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
