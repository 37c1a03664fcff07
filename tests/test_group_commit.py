"""Group commit: child scans that arrive together share one transaction, yet each is decided,
answered and recorded on its own, and one scan's trouble never fails its neighbours."""

import asyncio

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.conftest import make_actor
from tests.db import new_id, rows, value
from traitortrack.config import Settings
from traitortrack.db.engine import create_engine
from traitortrack.domain.outcomes import Outcome
from traitortrack.domain.roles import Role
from traitortrack.services.commands import NotSaved
from traitortrack.services.group_commit import settle
from traitortrack.services.scans import link_child, scan_parent

PARENT = "SB10001"
OTHER = "SB10002"


async def together(*scans):
    """Submit the scans in one go, as sockets do when they arrive within the same moment."""
    return await asyncio.gather(*scans)


async def transactions_of(engine, action: str = "link_child") -> int:
    return await value(
        engine, "SELECT count(DISTINCT xmin::text) FROM scan WHERE action = :a", a=action
    )


@pytest.fixture
async def parents(engine, dispatcher) -> None:
    for code in (PARENT, OTHER):
        assert (await scan_parent(engine, dispatcher, new_id(), code)).ok


@pytest.mark.usefixtures("parents")
async def test_scans_arriving_together_are_committed_in_one_transaction(engine, dispatcher):
    batches = REGISTRY.get_sample_value("traitortrack_scan_batch_size_bucket", {"le": "16.0"})
    results = await together(
        *(link_child(engine, dispatcher, new_id(), PARENT, f"KID{n:02d}") for n in range(20))
    )

    assert [r.outcome for r in results] == [Outcome.OK] * 20
    assert [r.message for r in results] == [f"KID{n:02d} linked ({n + 1}/30)" for n in range(20)]
    assert await transactions_of(engine) == 1
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == 20
    assert await value(engine, "SELECT count(*) FROM link") == 20
    events = await rows(engine, "SELECT payload FROM event WHERE kind = 'child.linked' ORDER BY id")
    assert [e.payload["parent"]["children"] for e in events] == list(range(1, 21))
    # /metrics shows the batch: one more transaction of more than 16 scans.
    assert REGISTRY.get_sample_value("traitortrack_scan_batch_size_bucket", {"le": "16.0"}) == (
        batches
    )
    assert REGISTRY.get_sample_value("traitortrack_scan_batch_size_bucket", {"le": "32.0"}) > 0


@pytest.mark.usefixtures("parents")
async def test_each_scan_in_a_batch_gets_its_own_answer_and_the_bad_ones_change_nothing(
    engine, dispatcher
):
    assert (await link_child(engine, dispatcher, new_id(), OTHER, "TAKEN1")).ok
    stranger = await make_actor(engine, Role.DISPATCHER, "indore")

    results = await together(
        link_child(engine, dispatcher, new_id(), PARENT, "GOOD1"),
        link_child(engine, dispatcher, new_id(), PARENT, "TAKEN1"),  # in another parent
        link_child(engine, dispatcher, new_id(), "SB99999", "GOOD2"),  # parent never scanned
        link_child(engine, dispatcher, new_id(), PARENT, "GOOD1"),  # already in it: duplicate
        link_child(engine, stranger, new_id(), PARENT, "GOOD3"),  # another area's parent
        link_child(engine, dispatcher, new_id(), PARENT, OTHER),  # a parent is not a child
        link_child(engine, dispatcher, new_id(), PARENT, "GOOD4"),
    )

    assert [(r.outcome, r.error) for r in results] == [
        (Outcome.OK, None),
        (Outcome.REJECTED, "CHILD_LINKED_ELSEWHERE"),
        (Outcome.REJECTED, "PARENT_NOT_FOUND"),
        (Outcome.DUPLICATE, None),
        (Outcome.REJECTED, "WRONG_AREA"),
        (Outcome.REJECTED, "BAG_IS_PARENT"),
        (Outcome.OK, None),
    ]
    assert results[6].message == "GOOD4 linked (2/30)"
    linked = await rows(
        engine,
        "SELECT b.code FROM link JOIN bag AS b ON b.id = link.child_id "
        "JOIN bag AS p ON p.id = link.parent_id WHERE p.code = :p ORDER BY b.code",
        p=PARENT,
    )
    assert [r.code for r in linked] == ["GOOD1", "GOOD4"]
    assert await value(engine, "SELECT count(*) FROM bag WHERE code IN ('GOOD2', 'GOOD3')") == 0
    # Refusals are recorded (a replay answers the same); a parent that does not exist is bad
    # input and leaves no trace.
    recorded = await rows(
        engine, "SELECT outcome, error FROM scan WHERE action = 'link_child' ORDER BY id"
    )
    assert [(r.outcome, r.error) for r in recorded] == [
        ("ok", None),  # TAKEN1 into OTHER, before the batch
        ("ok", None),
        ("rejected", "CHILD_LINKED_ELSEWHERE"),
        ("duplicate", None),
        ("rejected", "WRONG_AREA"),
        ("rejected", "BAG_IS_PARENT"),
        ("ok", None),
    ]


@pytest.mark.usefixtures("parents")
async def test_a_parent_filled_inside_one_batch_takes_thirty_and_completes_once(engine, dispatcher):
    results = await together(
        *(link_child(engine, dispatcher, new_id(), PARENT, f"FILL{n:02d}") for n in range(35))
    )

    assert [r.error for r in results] == [None] * 30 + ["PARENT_FULL"] * 5
    assert results[29].message == "FILL29 linked (30/30)"
    assert [e.kind for e in results[29].events] == ["child.linked", "parent.completed"]
    assert await value(engine, "SELECT status FROM bag WHERE code = :c", c=PARENT) == "completed"
    assert await value(engine, "SELECT count(*) FROM event WHERE kind = 'parent.completed'") == 1


@pytest.mark.usefixtures("parents")
async def test_the_same_scan_twice_in_one_batch_is_saved_once_and_answered_alike(
    engine, dispatcher
):
    scan_id = new_id()
    first, again = await together(
        link_child(engine, dispatcher, scan_id, PARENT, "TWICE1"),
        link_child(engine, dispatcher, scan_id, PARENT, "TWICE1"),
    )

    assert (first.outcome, first.message, first.replayed) == (Outcome.OK, again.message, False)
    assert again.replayed and again.events == ()
    assert len(first.events) == 1
    assert await value(engine, "SELECT count(*) FROM scan WHERE client_id = :i", i=scan_id) == 1
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == 1


@pytest.mark.usefixtures("parents")
async def test_a_scan_already_recorded_is_answered_from_the_record_inside_a_batch(
    engine, dispatcher
):
    scan_id = new_id()
    original = await link_child(engine, dispatcher, scan_id, PARENT, "ONCE1")

    replay, other = await together(
        link_child(engine, dispatcher, scan_id, PARENT, "ONCE1"),
        link_child(engine, dispatcher, new_id(), PARENT, "ONCE2"),
    )

    assert replay.replayed and (replay.outcome, replay.message) == (Outcome.OK, original.message)
    assert other.message == "ONCE2 linked (2/30)"
    assert await value(engine, "SELECT count(*) FROM event WHERE kind = 'child.linked'") == 2


@pytest.mark.usefixtures("parents")
async def test_a_child_taken_by_another_transaction_mid_batch_fails_only_that_scan(
    engine, dispatcher
):
    async with engine.connect() as other:
        # Another worker creates RACE1 in OTHER and has not committed yet.
        transaction = await other.begin()
        await other.execute(
            text("INSERT INTO bag (code, kind, area) VALUES ('RACE1', 'child', 'jaipur')")
        )
        await other.execute(
            text(
                "INSERT INTO link (child_id, parent_id) SELECT c.id, p.id FROM bag AS c, bag AS p "
                "WHERE c.code = 'RACE1' AND p.code = :p"
            ),
            {"p": OTHER},
        )
        batch = asyncio.ensure_future(
            together(
                link_child(engine, dispatcher, new_id(), PARENT, "CALM1"),
                link_child(engine, dispatcher, new_id(), PARENT, "RACE1"),
                link_child(engine, dispatcher, new_id(), PARENT, "CALM2"),
            )
        )
        await asyncio.sleep(0.3)
        assert not batch.done(), "the batch waits for the other transaction's RACE1"
        await transaction.commit()

    results = await batch

    assert [(r.outcome, r.error) for r in results] == [
        (Outcome.OK, None),
        (Outcome.REJECTED, "CHILD_LINKED_ELSEWHERE"),
        (Outcome.OK, None),
    ]
    assert results[2].message == "CALM2 linked (2/30)"
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == 2


@pytest.mark.usefixtures("parents")
@pytest.mark.usefixtures("parents")
async def test_a_child_taken_out_while_the_batch_waited_for_its_parent_is_linked_again(
    engine, dispatcher
):
    assert (await link_child(engine, dispatcher, new_id(), PARENT, "BACK1")).ok
    async with engine.connect() as other:
        # An undo elsewhere holds the parent while it takes BACK1 out.
        transaction = await other.begin()
        await other.execute(text("SELECT 1 FROM bag WHERE code = :p FOR UPDATE"), {"p": PARENT})
        await other.execute(
            text("DELETE FROM link WHERE child_id = (SELECT id FROM bag WHERE code = 'BACK1')")
        )
        await other.execute(text("UPDATE bag SET child_count = 0 WHERE code = :p"), {"p": PARENT})
        scan = asyncio.ensure_future(link_child(engine, dispatcher, new_id(), PARENT, "BACK1"))
        await asyncio.sleep(0.3)
        assert not scan.done(), "the batch waits for the parent's lock"
        await transaction.commit()

    result = await scan

    assert (result.outcome, result.message) == (Outcome.OK, "BACK1 linked (1/30)")
    assert await value(engine, "SELECT count(*) FROM link") == 1


@pytest.mark.usefixtures("parents")
async def test_two_workers_scanning_the_same_children_in_opposite_orders_both_finish(
    engine, settings: Settings, dispatcher
):
    second = create_engine(settings)  # another worker's engine and lanes
    try:
        codes = [f"CROSS{n:02d}" for n in range(20)]
        forward = [link_child(engine, dispatcher, new_id(), PARENT, c) for c in codes]
        backward = [link_child(second, dispatcher, new_id(), OTHER, c) for c in reversed(codes)]
        results = await asyncio.wait_for(together(*forward, *backward), 20)
    finally:
        await second.dispose()

    assert sum(r.ok for r in results) == 20  # each child went into exactly one parent
    assert {r.error for r in results if not r.ok} == {"CHILD_LINKED_ELSEWHERE"}
    assert await value(engine, "SELECT count(*) FROM link") == 20


async def test_when_the_database_is_unreachable_every_waiting_scan_gets_the_error(
    settings: Settings, dispatcher
):
    unreachable = create_engine(settings.with_database("postgresql+asyncpg://nobody@127.0.0.1:9/x"))
    try:
        results = await asyncio.gather(
            *(link_child(unreachable, dispatcher, new_id(), PARENT, f"LOST{n}") for n in range(3)),
            return_exceptions=True,
        )
    finally:
        await unreachable.dispose()

    assert all(isinstance(r, NotSaved) for r in results), results


@pytest.mark.usefixtures("parents")
async def test_a_stop_waits_for_queued_scans_to_be_committed(engine, dispatcher):
    pending = [
        asyncio.ensure_future(link_child(engine, dispatcher, new_id(), PARENT, f"LAST{n}"))
        for n in range(10)
    ]
    await asyncio.sleep(0)  # queued, not yet committed

    await settle(engine)

    assert all(task.done() and task.result().ok for task in pending)
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == 10
