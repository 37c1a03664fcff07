"""How the database looks from one worker: its connection pool, and the database's size."""

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# Pool usage levels (SPEC §6): the first one reached, from the top, names the level.
USAGE_LEVELS = ((95.0, "critical"), (85.0, "high"), (70.0, "warning"))

_DATABASE = text(
    """
    SELECT pg_database_size(current_database()) AS size_bytes,
           blks_hit, blks_read, numbackends
    FROM pg_stat_database WHERE datname = current_database()
    """
)


def usage_level(percent: float) -> str:
    return next((name for limit, name in USAGE_LEVELS if percent >= limit), "ok")


def pool_status(engine: AsyncEngine, max_overflow: int) -> dict[str, Any]:
    """Size, connections in use, overflow and usage of this worker's pool.

    ``overflow()`` counts from ``-size`` (a pool not yet filled); only connections beyond
    ``size`` are overflow in the everyday sense.
    """
    pool: Any = engine.pool
    size, checked_out = pool.size(), pool.checkedout()
    capacity = size + max_overflow
    return {
        "size": size,
        "checked_out": checked_out,
        "overflow": max(pool.overflow(), 0),
        "capacity": capacity,
        "usage_pct": round(100 * checked_out / capacity, 1) if capacity else 0.0,
    }


async def database_status(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(_DATABASE)).one()
    reads = row.blks_hit + row.blks_read
    return {
        "size_bytes": row.size_bytes,
        "cache_hit_pct": round(100 * row.blks_hit / reads, 2) if reads else None,
        "connections": row.numbackends,
    }
