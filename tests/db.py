"""Small helpers for tests that look at the database directly."""

import uuid

from sqlalchemy import text


def new_id() -> str:
    """A fresh client id, as a scanner would make one."""
    return str(uuid.uuid4())


async def rows(engine, sql: str, **params) -> list:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def value(engine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()
