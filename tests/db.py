"""Small helpers for tests that look at the database directly."""

import re
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


BIG_TABLES = frozenset({"bag", "link", "scan", "event", "bill_parent", "bill", "audit"})
_SEQ_SCAN = re.compile(r"Seq Scan on (\w+)(?: (\w+))?")
_EVENT_PARTITION = re.compile(r"from_\d+")  # traitortrack.db.retention's partition names


def big_table_seq_scans(plan: list[str]) -> list[str]:
    """The lines of an EXPLAIN that read a big table, or one of its partitions, sequentially.

    A partition shows under its own name, aliased after its table (``from_1 event_1``)."""
    found = []
    for line in plan:
        scan = _SEQ_SCAN.search(line)
        if scan is None:
            continue
        table, alias = scan[1], re.sub(r"_\d+$", "", scan[2] or "")
        if table in BIG_TABLES or alias in BIG_TABLES or _EVENT_PARTITION.fullmatch(table):
            found.append(line)
    return found
