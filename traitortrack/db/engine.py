"""Engine setup: one asyncpg pool per worker process, created at start-up."""

from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from traitortrack.config import Settings

# The database is down, restarting, unreachable, dropped the connection, or could not answer in
# time: nothing was done, and the same request may succeed a moment later.
_UNAVAILABLE = (
    OSError,  # refused, reset, timed out
    PoolTimeout,
    asyncpg.InterfaceError,  # "connection is closed"
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,  # statement_timeout
    asyncpg.TooManyConnectionsError,
)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not do it now (rather than that it refused)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, _UNAVAILABLE):
            return True
        if isinstance(seen, DBAPIError):
            if seen.connection_invalidated:
                return True
            seen = seen.orig
        else:
            seen = seen.__cause__
    return False


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.database_url is None:
        raise RuntimeError("No database URL: start the embedded database first.")
    engine = create_async_engine(
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
    event.listen(engine.sync_engine, "checkout", _skip_closed)
    return engine


def _skip_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Never hand out a connection asyncpg already knows is closed (its backend was killed or
    the server restarted while it sat in the pool): the pool replaces it. Unlike
    ``pool_pre_ping`` this costs no round trip; a connection that dies unnoticed fails its
    first statement instead, and ``commands.connect`` invalidates it then."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this connection while it was pooled")
