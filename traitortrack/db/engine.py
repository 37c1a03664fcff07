"""Engine setup: one asyncpg pool per worker process, created at start-up."""

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from traitortrack.config import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.database_url is None:
        raise RuntimeError("No database URL: start the embedded database first.")
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=10,
        pool_recycle=1800,
        connect_args={
            # Scan-path statements are tiny; JIT compilation only adds latency to them.
            "server_settings": {"application_name": "traitortrack", "jit": "off"},
        },
    )
