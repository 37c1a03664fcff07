"""Demo data is consistent with the rules the services enforce, and can be loaded twice."""

import random

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.demo import DEMO_PASSWORD, plan_children, seed_demo
from traitortrack.domain.outcomes import Outcome
from traitortrack.domain.roles import MAX_DISPATCHERS_PER_AREA, Role
from traitortrack.security import verify_password
from traitortrack.services.commands import Actor
from traitortrack.services.scans import link_child


async def _scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def _check_consistent(engine: AsyncEngine) -> None:
    # child_count always equals the number of links, and only 30 children complete a parent.
    assert (
        await _scalar(
            engine,
            """SELECT count(*) FROM bag p
               LEFT JOIN (SELECT parent_id, count(*) AS n FROM link GROUP BY parent_id) l
                 ON l.parent_id = p.id
               WHERE p.kind = 'parent' AND (
                 p.child_count <> coalesce(l.n, 0)
                 OR (p.status = 'completed') <> (coalesce(l.n, 0) = 30))""",
        )
        == 0
    )
    # Every child is linked, to a parent of its own area; links only join children to parents.
    assert (
        await _scalar(
            engine,
            """SELECT count(*) FROM bag c LEFT JOIN link l ON l.child_id = c.id
               LEFT JOIN bag p ON p.id = l.parent_id
               WHERE c.kind = 'child' AND (p.id IS NULL OR p.kind <> 'parent'
                                           OR p.area IS DISTINCT FROM c.area)""",
        )
        == 0
    )
    # Bills: linked <= capacity, status matches the count.
    assert (
        await _scalar(
            engine,
            """SELECT count(*) FROM bill b
               LEFT JOIN (SELECT bill_id, count(*) AS n FROM bill_parent GROUP BY bill_id) bp
                 ON bp.bill_id = b.id
               WHERE coalesce(bp.n, 0) > b.capacity
                  OR b.capacity NOT BETWEEN 1 AND 50
                  OR (b.status = 'new') <> (coalesce(bp.n, 0) = 0)
                  OR (b.status = 'completed' AND bp.n < b.capacity)""",
        )
        == 0
    )
    # One scan and one child.linked event per link, parent scans (and re-scans) only of parents.
    links = await _scalar(engine, "SELECT count(*) FROM link")
    assert await _scalar(engine, "SELECT count(*) FROM scan WHERE action = 'link_child'") == links
    assert await _scalar(engine, "SELECT count(*) FROM event WHERE kind = 'child.linked'") == links
    assert await _scalar(
        engine, "SELECT count(DISTINCT code) FROM scan WHERE action = 'scan_parent'"
    ) == await _scalar(engine, "SELECT count(*) FROM bag WHERE kind = 'parent'")
    assert await _scalar(engine, "SELECT count(*) FROM scan WHERE action = 'scan_parent'") == (
        await _scalar(engine, "SELECT count(*) FROM event WHERE kind = 'parent.scanned'")
    )
    assert await _scalar(engine, "SELECT count(*) FROM scan WHERE outcome <> 'ok'") == 0
    completed = await _scalar(engine, "SELECT count(*) FROM bag WHERE status = 'completed'")
    assert await _scalar(engine, "SELECT count(*) FROM event WHERE kind = 'parent.completed'") == (
        completed
    )
    # Dispatchers within the per-area limit.
    assert (
        await _scalar(
            engine,
            'SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM "user"'
            " WHERE role = 'dispatcher' GROUP BY area) d",
        )
        <= MAX_DISPATCHERS_PER_AREA
    )


async def test_seed_demo_is_consistent_and_rerunnable(engine: AsyncEngine) -> None:
    first = await seed_demo(engine, 40, progress=False)
    assert first.parents == 40
    assert first.codes == "SB00000..SB00039"
    assert {role for _, role, _ in first.users} == {"dispatcher", "biller", "supervisor"}
    assert await _scalar(engine, "SELECT count(*) FROM bag") == 40 + first.children
    assert await _scalar(engine, "SELECT count(*) FROM bill") == first.bills > 0
    assert await _scalar(engine, "SELECT count(*) FROM bag WHERE status = 'completed'") > 0
    assert (
        await _scalar(engine, "SELECT count(*) FROM bag WHERE kind = 'parent' AND child_count < 30")
        > 0
    )
    await _check_consistent(engine)

    hashed = await _scalar(
        engine, "SELECT password_hash FROM \"user\" WHERE username = 'demo_biller'"
    )
    assert isinstance(hashed, str) and verify_password(DEMO_PASSWORD, hashed)
    users = await _scalar(engine, 'SELECT count(*) FROM "user"')

    second = await seed_demo(engine, 40, progress=False, seed=2)
    assert second.codes == "SB00040..SB00079"
    assert await _scalar(engine, 'SELECT count(*) FROM "user"') == users
    assert await _scalar(engine, "SELECT count(*) FROM bag WHERE kind = 'parent'") == 80
    await _check_consistent(engine)


async def test_seed_demo_respects_dispatcher_limit(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                'INSERT INTO "user" (username, password_hash, role, area)'
                " SELECT 'jaipur_' || i, 'x', 'dispatcher', 'jaipur' FROM generate_series(1, 9) i"
            )
        )
    report = await seed_demo(engine, 5, progress=False)
    assert [name for name, _, area in report.users if area == "jaipur"] == ["demo_jaipur_1"]
    await _check_consistent(engine)


async def test_services_carry_on_from_demo_data(engine: AsyncEngine) -> None:
    await seed_demo(engine, 40, progress=False)
    async with engine.connect() as conn:
        parent = (
            await conn.execute(
                text(
                    "SELECT p.code, p.area, p.child_count, u.id, u.username FROM bag p"
                    ' JOIN "user" u ON u.id = p.owner_id'
                    " WHERE p.kind = 'parent' AND p.child_count < 30 ORDER BY p.id LIMIT 1"
                )
            )
        ).one()
    actor = Actor(parent.id, parent.username, Role.DISPATCHER, parent.area)
    result = await link_child(engine, actor, "after-demo-1", parent.code, "NEWCHILD1")
    assert result.outcome == Outcome.OK, result.message
    assert result.data["parent"]["children"] == parent.child_count + 1
    # A client id the demo used is taken: the service answers with the stored result.
    replay = await link_child(engine, actor, f"seed-{parent.code}", parent.code, "NEWCHILD2")
    assert replay.replayed
    await _check_consistent(engine)


async def test_seeding_up_to_totals_adds_history_once(engine: AsyncEngine) -> None:
    first = await seed_demo(engine, bags=500, history=6000, spare_parents=2, progress=False)
    bags = await _scalar(engine, "SELECT count(*) FROM bag")
    rows = await _scalar(
        engine, "SELECT (SELECT count(*) FROM scan) + (SELECT count(*) FROM event)"
    )
    assert 500 <= bags < 500 + 31
    assert 6000 <= rows < 6000 + 2 * first.parents + 3 * first.bills
    assert first.history == rows
    await _check_consistent(engine)

    second = await seed_demo(engine, bags=500, history=6000, progress=False)
    assert (second.parents, second.history) == (0, 0)
    assert await _scalar(engine, "SELECT count(*) FROM bag") == bags


def test_parents_fill_up_when_codes_run_short_of_the_bags_asked_for() -> None:
    counts = plan_children(random.Random(1), 0, 10 * 31, 10)
    assert counts == [30] * 10
    with pytest.raises(ValueError, match="310 more bags fit"):
        plan_children(random.Random(1), 0, 10 * 31 + 10, 10)
