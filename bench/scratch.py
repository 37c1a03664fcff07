"""Where a benchmark runs and where its figures go: a scratch database (and directory) on the
test server, dropped afterwards, and the printed table, optionally written to the docs."""

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from bench.docs import DOC, write_section
from traitortrack.config import normalize_database_url

T = TypeVar("T")


def server_url() -> str:
    return os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def libpq_url(url: str, database: str) -> str:
    return (make_url(url).set(drivername="postgresql", database=database)).render_as_string(
        hide_password=False
    )


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[tuple[str, str]]:
    """A new, empty database on the test server: (SQLAlchemy URL, server version); dropped after."""
    server = server_url()
    name = f"tt_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(libpq_url(server, make_url(server).database or "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        version = await admin.fetchval("SHOW server_version")
        yield normalize_database_url(libpq_url(server, name)), version
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def in_scratch(prefix: str, run: Callable[[str, Path], Awaitable[T]]) -> tuple[T, str]:
    """``run(database_url, directory)`` on a scratch database and directory; (its result, the
    server's version)."""
    async with scratch_database() as (database_url, postgres):
        with tempfile.TemporaryDirectory(prefix=prefix) as directory:
            return await run(database_url, Path(directory)), postgres


def publish(body: str, write: bool, heading: str, command: str, source: str, postgres: str) -> None:
    """Print the figures; with ``write``, put them under ``heading`` in docs/performance.md."""
    print(body)
    if write:
        write_section(heading, command, source, body, postgres)
        print(f"written to {DOC}")
