"""Filling a test warehouse: through the services (as scanners would), or in bulk with SQL when
a test needs many rows fast."""

from datetime import datetime

from sqlalchemy import text

from tests.db import new_id
from traitortrack.domain.outcomes import Outcome
from traitortrack.services.commands import Actor
from traitortrack.services.scans import link_child, scan_parent


async def stock(engine, dispatcher: Actor, parents: dict[str, list[str]]) -> None:
    """Scan each parent, then its children, as a dispatcher does at the scanner."""
    for parent, children in parents.items():
        result = await scan_parent(engine, dispatcher, new_id(), parent)
        assert result.outcome == Outcome.OK, result.message
        for child in children:
            result = await link_child(engine, dispatcher, new_id(), parent, child)
            assert result.outcome == Outcome.OK, result.message


async def bulk_bags(
    engine, codes: list[str], kind: str, area: str | None, created_at: datetime | None = None
) -> None:
    """Insert bare bags directly (no scans, no links): many rows, quickly."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bag (code, kind, area, created_at, updated_at) "
                "SELECT c, :kind, :area, coalesce(CAST(:at AS timestamptz), now()), now() "
                "FROM unnest(CAST(:codes AS text[])) WITH ORDINALITY AS t(c, n) ORDER BY n"
            ),
            {"codes": codes, "kind": kind, "area": area, "at": created_at},
        )
