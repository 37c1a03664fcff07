"""Alembic environment. The app passes its own connection (see traitortrack.db.migrate);
the ``alembic`` command line gets one from the app's settings."""

import asyncio

from alembic import context
from sqlalchemy import Connection

from traitortrack.config import Settings
from traitortrack.db.engine import create_engine
from traitortrack.db.models import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    settings = Settings.from_env()
    if settings.database_url is None:
        from traitortrack.db.embedded import start_embedded_postgres

        settings = settings.with_database(start_embedded_postgres(settings.data_dir))
    engine = create_engine(settings)
    async with engine.begin() as connection:
        await connection.run_sync(run_with)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported; run `traitortrack migrate`.")
provided = context.config.attributes.get("connection")
if provided is not None:
    run_with(provided)
else:
    asyncio.run(run_from_settings())
