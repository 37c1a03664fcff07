"""Races the warehouse really has: many scanners, one parent or one bill, all at once."""

import asyncio
from collections import Counter

from tests.conftest import make_actor
from tests.db import new_id, value
from traitortrack.domain.outcomes import Outcome
from traitortrack.domain.roles import Role
from traitortrack.services.bags import delete_bag
from traitortrack.services.bills import create_bill, link_bill_parent
from traitortrack.services.scans import link_child, scan_parent, undo_last_child

PARENT = "SB12345"
FULL = "Parent bag is full! Maximum 30 child bags per parent."


async def race(*commands) -> list:
    """Run the commands together; none may raise."""
    results = await asyncio.gather(*commands, return_exceptions=True)
    escaped = [result for result in results if isinstance(result, BaseException)]
    assert escaped == []
    return results


def tally(results) -> Counter:
    return Counter((result.outcome, result.error) for result in results)


async def test_hundred_children_racing_into_one_parent_fill_it_with_exactly_thirty(
    engine, dispatcher
):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    results = await race(
        *(link_child(engine, dispatcher, new_id(), PARENT, f"KID{n:03d}") for n in range(100))
    )

    assert tally(results) == {(Outcome.OK, None): 30, (Outcome.REJECTED, "PARENT_FULL"): 70}
    assert {result.message for result in results if result.error} == {FULL}
    counts = sorted(result.data["parent"]["children"] for result in results if result.ok)
    assert counts == list(range(1, 31))
    assert await value(engine, "SELECT status FROM bag WHERE code = :c", c=PARENT) == "completed"
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == 30
    assert await value(engine, "SELECT count(*) FROM link") == 30
    assert await value(engine, "SELECT count(*) FROM bag WHERE kind = 'child'") == 30
    assert await value(engine, "SELECT count(*) FROM event WHERE kind = 'parent.completed'") == 1
    assert await value(engine, "SELECT count(*) FROM event WHERE kind = 'child.linked'") == 30


async def test_one_new_child_racing_into_two_parents_lands_in_exactly_one(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), "SB00001")
    await scan_parent(engine, dispatcher, new_id(), "SB00002")
    parents = ["SB00001", "SB00002"] * 25

    results = await race(
        *(link_child(engine, dispatcher, new_id(), parent, "ABC123") for parent in parents)
    )

    winner = await value(
        engine,
        "SELECT p.code FROM link JOIN bag p ON p.id = link.parent_id "
        "JOIN bag c ON c.id = link.child_id WHERE c.code = 'ABC123'",
    )
    assert winner in {"SB00001", "SB00002"}
    assert await value(engine, "SELECT count(*) FROM link") == 1
    assert await value(engine, "SELECT count(*) FROM bag WHERE code = 'ABC123'") == 1
    into_winner = [r for parent, r in zip(parents, results, strict=True) if parent == winner]
    into_loser = [r for parent, r in zip(parents, results, strict=True) if parent != winner]
    assert tally(into_winner) == {(Outcome.OK, None): 1, (Outcome.DUPLICATE, None): 24}
    assert tally(into_loser) == {(Outcome.REJECTED, "CHILD_LINKED_ELSEWHERE"): 25}
    assert {r.message for r in into_loser} == {
        f"Child bag ABC123 is already linked to parent bag {winner}."
    }
    assert await value(engine, "SELECT sum(child_count) FROM bag WHERE kind = 'parent'") == 1


async def test_one_new_parent_scanned_by_many_at_once_is_created_once(engine):
    scanners = [await make_actor(engine, Role.DISPATCHER, "jaipur") for _ in range(10)]

    results = await race(*(scan_parent(engine, s, new_id(), PARENT) for s in scanners))

    assert tally(results) == {(Outcome.OK, None): 10}
    created = [result for result in results if "created" in result.message]
    assert len(created) == 1
    assert await value(engine, "SELECT count(*) FROM bag") == 1
    assert await value(engine, "SELECT count(*) FROM scan") == 10


async def test_twenty_parents_racing_onto_a_bill_of_five_fill_exactly_five_places(
    engine, dispatcher, biller
):
    codes = [f"SB{n:05d}" for n in range(1, 21)]
    for code in codes:
        await scan_parent(engine, dispatcher, new_id(), code)
    await create_bill(engine, biller, new_id(), "B-001", 5)

    results = await race(
        *(link_bill_parent(engine, biller, new_id(), "B-001", code) for code in codes)
    )

    assert tally(results) == {(Outcome.OK, None): 5, (Outcome.REJECTED, "BILL_FULL"): 15}
    assert {r.message for r in results if r.error} == {"Bill capacity reached (5/5)"}
    assert await value(engine, "SELECT count(*) FROM bill_parent") == 5
    assert await value(engine, "SELECT status FROM bill") == "processing"
    assert await value(engine, "SELECT count(*) FROM event WHERE kind = 'bill.bag_linked'") == 5
    assert await value(engine, "SELECT count(*) FROM audit WHERE action = 'bill.link_parent'") == 5


async def test_one_parent_racing_onto_two_bills_lands_on_exactly_one(engine, dispatcher, biller):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    await create_bill(engine, biller, new_id(), "B-001", 5)
    await create_bill(engine, biller, new_id(), "B-002", 5)
    bills = ["B-001", "B-002"] * 10

    results = await race(
        *(link_bill_parent(engine, biller, new_id(), bill, PARENT) for bill in bills)
    )

    winner = await value(
        engine, "SELECT bill.number FROM bill JOIN bill_parent ON bill_parent.bill_id = bill.id"
    )
    assert await value(engine, "SELECT count(*) FROM bill_parent") == 1
    onto_winner = [r for bill, r in zip(bills, results, strict=True) if bill == winner]
    onto_loser = [r for bill, r in zip(bills, results, strict=True) if bill != winner]
    assert tally(onto_winner) == {(Outcome.OK, None): 1, (Outcome.DUPLICATE, None): 9}
    assert tally(onto_loser) == {(Outcome.REJECTED, "PARENT_ON_OTHER_BILL"): 10}
    assert {r.message for r in onto_loser} == {f"Bag {PARENT} is already linked to bill {winner}"}
    loser = ({"B-001", "B-002"} - {winner}).pop()
    statuses = {
        number: await value(engine, "SELECT status FROM bill WHERE number = :n", n=number)
        for number in (winner, loser)
    }
    assert statuses == {winner: "processing", loser: "new"}


async def test_one_code_raced_as_parent_and_as_child_takes_exactly_one_role(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    codes = [f"SB{n:05d}" for n in range(50001, 50011)]

    as_parent = race(*(scan_parent(engine, dispatcher, new_id(), code) for code in codes))
    as_child = race(*(link_child(engine, dispatcher, new_id(), PARENT, code) for code in codes))
    parent_results, child_results = await asyncio.gather(as_parent, as_child)

    kinds = {
        code: await value(engine, "SELECT kind FROM bag WHERE code = :c", c=code) for code in codes
    }
    for code, parent_result, child_result in zip(codes, parent_results, child_results, strict=True):
        if kinds[code] == "parent":
            assert (parent_result.ok, child_result.error) == (True, "BAG_IS_PARENT"), code
        else:
            assert (parent_result.error, child_result.ok) == ("BAG_IS_CHILD", True), code
    linked = sum(kind == "child" for kind in kinds.values())
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == linked


async def test_deleting_free_children_while_they_are_linked_leaves_the_counts_true(
    engine, dispatcher, admin
):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    codes = [f"FREE{n:02d}" for n in range(20)]
    # Linked and undone: the children exist, free, and nothing stops deleting them.
    for code in codes:
        assert (await link_child(engine, dispatcher, new_id(), PARENT, code)).ok
    for _ in codes:
        assert (await undo_last_child(engine, dispatcher, new_id(), PARENT)).ok

    deletions = race(*(delete_bag(engine, admin, new_id(), code) for code in codes))
    links = race(*(link_child(engine, dispatcher, new_id(), PARENT, code) for code in codes))
    deleted, linked = await asyncio.gather(deletions, links)

    for code, deletion, link in zip(codes, deleted, linked, strict=True):
        assert deletion.ok or link.ok, code
        assert deletion.ok or deletion.error == "CHILD_LINKED", code
        assert link.ok or link.error == "CONFLICT", code
    in_parent = await value(engine, "SELECT count(*) FROM link")
    assert in_parent == sum(link.ok for link in linked)
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == in_parent
