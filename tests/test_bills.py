"""SPEC §3 bills: create, edit, link and remove parents, complete, reopen, delete, weights."""

from dataclasses import replace

import pytest

from tests.conftest import make_actor
from tests.db import new_id, rows, value
from traitortrack.domain.outcomes import Outcome
from traitortrack.domain.roles import Role
from traitortrack.services.bills import (
    complete_bill,
    create_bill,
    delete_bill,
    edit_bill,
    link_bill_parent,
    remove_bill_parent,
    reopen_bill,
)
from traitortrack.services.scans import link_child, scan_parent

BILL = "B-001"


async def bill_row(engine, number: str = BILL):
    found = await rows(engine, "SELECT * FROM bill WHERE lower(number) = lower(:n)", n=number)
    return found[0] if found else None


async def parents_on(engine, number: str = BILL) -> list[str]:
    return [
        row.code
        for row in await rows(
            engine,
            "SELECT bag.code FROM bill_parent JOIN bill ON bill.id = bill_parent.bill_id "
            "JOIN bag ON bag.id = bill_parent.parent_id WHERE bill.number = :n ORDER BY bag.code",
            n=number,
        )
    ]


async def table_counts(engine) -> dict[str, int]:
    counts = {}
    for table in ("bill", "bill_parent", "audit", "event", "scan"):
        counts[table] = await value(engine, f"SELECT count(*) FROM {table}")
    return counts


def assert_rejected(result, error: str, message: str | None = None) -> None:
    assert result.outcome == Outcome.REJECTED
    assert result.error == error
    if message is not None:
        assert result.message == message


async def make_parents(engine, dispatcher, *children_counts: int) -> list[str]:
    """Scan one parent per count, SB00001 upwards, each holding that many children."""
    codes = []
    for index, count in enumerate(children_counts, start=1):
        code = f"SB{index:05d}"
        assert (await scan_parent(engine, dispatcher, new_id(), code)).ok
        for number in range(count):
            assert (await link_child(engine, dispatcher, new_id(), code, f"P{index}C{number}")).ok
        codes.append(code)
    return codes


async def bill_with_parents(engine, biller, dispatcher, capacity: int, *children_counts: int):
    assert (await create_bill(engine, biller, new_id(), BILL, capacity)).ok
    codes = await make_parents(engine, dispatcher, *children_counts)
    for code in codes:
        assert (await link_bill_parent(engine, biller, new_id(), BILL, code)).ok
    return codes


# Creating.


async def test_new_bill_is_trimmed_empty_and_new(engine, biller):
    result = await create_bill(engine, biller, new_id(), "  B-001 \t", 10, "  Mustard to Delhi ")

    assert result.outcome == Outcome.OK
    assert result.message == "Bill B-001 created (0/10)"
    assert result.data["bill"] == {
        "number": BILL,
        "description": "Mustard to Delhi",
        "status": "new",
        "capacity": 10,
        "linked": 0,
        "children": 0,
        "actual_weight_kg": 0,
        "expected_weight_kg": 300,
    }
    stored = await bill_row(engine)
    assert (stored.number, stored.description, stored.capacity, stored.status) == (
        BILL,
        "Mustard to Delhi",
        10,
        "new",
    )
    assert stored.created_by == biller.user_id
    assert [event.kind for event in result.events] == ["bill.created"]


@pytest.mark.parametrize("number", [None, "", "   ", "\t\n", 42, ["B-001"]])
async def test_bill_number_is_required(engine, biller, number):
    before = await table_counts(engine)

    result = await create_bill(engine, biller, new_id(), number, 10)

    assert_rejected(result, "BILL_NUMBER_REQUIRED", "Bill number is required.")
    assert await table_counts(engine) == before


@pytest.mark.parametrize("number", ["B-001", "b-001", " B-001 ", "b-001\n"])
async def test_bill_numbers_are_unique_ignoring_case(engine, biller, number):
    await create_bill(engine, biller, new_id(), BILL, 10)

    result = await create_bill(engine, biller, new_id(), number, 5)

    assert_rejected(result, "BILL_EXISTS", f"Bill {number.strip()} already exists")
    assert await value(engine, "SELECT count(*) FROM bill") == 1
    assert (await bill_row(engine)).capacity == 10


@pytest.mark.parametrize("number", ["ΣΑΣ-1", "İ-1", "Ärger-7", "बिल-1"])
async def test_bill_with_a_non_ascii_number_can_be_found_again_by_that_number(
    engine, biller, dispatcher, number
):
    await make_parents(engine, dispatcher, 0)
    assert (await create_bill(engine, biller, new_id(), number, 1)).ok

    edited = await edit_bill(engine, biller, new_id(), number, description="found")
    linked = await link_bill_parent(engine, biller, new_id(), number, "SB00001")
    again = await link_bill_parent(engine, biller, new_id(), number, "SB00001")

    assert (edited.outcome, linked.outcome, again.outcome) == (
        Outcome.OK,
        Outcome.OK,
        Outcome.DUPLICATE,
    )
    assert await parents_on(engine, number) == ["SB00001"]


async def test_bill_numbers_differing_only_in_non_ascii_case_are_the_same_bill(engine, biller):
    await create_bill(engine, biller, new_id(), "Ärger-7", 5)

    result = await create_bill(engine, biller, new_id(), "ärger-7", 5)

    assert_rejected(result, "BILL_EXISTS", "Bill ärger-7 already exists")


@pytest.mark.parametrize("capacity", [1, 50, "25"])
async def test_capacity_from_one_to_fifty_is_accepted_on_create(engine, biller, capacity):
    result = await create_bill(engine, biller, new_id(), BILL, capacity)

    assert result.ok
    assert (await bill_row(engine)).capacity == int(capacity)


@pytest.mark.parametrize(
    ("capacity", "error"),
    [
        (0, "CAPACITY_OUT_OF_RANGE"),
        (-1, "CAPACITY_OUT_OF_RANGE"),
        (51, "CAPACITY_OUT_OF_RANGE"),
        (100, "CAPACITY_OUT_OF_RANGE"),
        (None, "CAPACITY_INVALID"),
        ("ten", "CAPACITY_INVALID"),
        (2.5, "CAPACITY_INVALID"),
        (True, "CAPACITY_INVALID"),
        ("9" * 5000, "CAPACITY_INVALID"),
    ],
)
async def test_capacity_outside_one_to_fifty_is_refused_on_create(engine, biller, capacity, error):
    result = await create_bill(engine, biller, new_id(), BILL, capacity)

    assert_rejected(result, error)
    assert await bill_row(engine) is None


@pytest.mark.parametrize("description", ["x" * 501, "bad\x00byte", "lone \ud800 surrogate", 7])
async def test_unstorable_description_is_refused_with_a_message(engine, biller, description):
    before = await table_counts(engine)

    result = await create_bill(engine, biller, new_id(), BILL, 10, description)

    assert result.outcome == Outcome.REJECTED
    assert result.error.startswith("DESCRIPTION_")
    assert result.message.startswith("Description")
    assert await table_counts(engine) == before


@pytest.mark.parametrize("role", [Role.DISPATCHER, Role.SUPERVISOR])
async def test_only_billers_and_admins_manage_bills(engine, admin, role):
    actor = await make_actor(engine, role, "jaipur" if role == Role.DISPATCHER else None)

    refused = await create_bill(engine, actor, new_id(), BILL, 10)

    assert_rejected(refused, "FORBIDDEN")
    assert await bill_row(engine) is None
    assert (await create_bill(engine, admin, new_id(), BILL, 10)).ok


# Editing.


async def test_edit_changes_description_and_capacity_up_to_one_hundred(engine, biller):
    await create_bill(engine, biller, new_id(), BILL, 10, "old")

    result = await edit_bill(
        engine, biller, new_id(), "b-001", capacity=100, description=" new words "
    )

    assert result.outcome == Outcome.OK
    assert result.message == "Bill B-001 saved (0/100)"
    assert result.data["bill"]["expected_weight_kg"] == 3000
    stored = await bill_row(engine)
    assert (stored.capacity, stored.description) == (100, "new words")


async def test_edit_keeps_what_it_is_not_given(engine, biller):
    await create_bill(engine, biller, new_id(), BILL, 10, "kept")

    assert (await edit_bill(engine, biller, new_id(), BILL, capacity=20)).ok
    assert (await bill_row(engine)).description == "kept"
    assert (await edit_bill(engine, biller, new_id(), BILL, description="changed")).ok
    assert (await bill_row(engine)).capacity == 20


@pytest.mark.parametrize("capacity", [0, 101, 1000, "lots"])
async def test_edited_capacity_must_stay_between_one_and_one_hundred(engine, biller, capacity):
    await create_bill(engine, biller, new_id(), BILL, 10)

    result = await edit_bill(engine, biller, new_id(), BILL, capacity=capacity)

    assert result.outcome == Outcome.REJECTED
    assert result.error in {"CAPACITY_OUT_OF_RANGE", "CAPACITY_INVALID"}
    assert (await bill_row(engine)).capacity == 10


async def test_capacity_cannot_drop_below_the_parents_already_linked(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 5, 0, 0, 0)

    refused = await edit_bill(engine, biller, new_id(), BILL, capacity=2)

    assert_rejected(
        refused,
        "CAPACITY_BELOW_LINKED",
        "Capacity cannot be below the 3 parent bags already linked.",
    )
    assert (await bill_row(engine)).capacity == 5
    assert (await edit_bill(engine, biller, new_id(), BILL, capacity=3)).ok
    assert (await bill_row(engine)).capacity == 3


async def test_raising_the_capacity_of_a_completed_bill_puts_it_back_in_processing(
    engine, biller, dispatcher
):
    await bill_with_parents(engine, biller, dispatcher, 1, 0)
    await complete_bill(engine, biller, new_id(), BILL)

    result = await edit_bill(engine, biller, new_id(), BILL, capacity=2)

    assert result.data["bill"]["status"] == "processing"
    assert (await bill_row(engine)).status == "processing"


async def test_editing_an_unknown_bill_is_refused(engine, biller):
    result = await edit_bill(engine, biller, new_id(), "NOPE", capacity=5)

    assert_rejected(result, "BILL_NOT_FOUND", "Bill NOPE not found.")


# Linking parents.


async def test_linking_a_parent_puts_a_new_bill_in_processing(engine, biller, dispatcher):
    await create_bill(engine, biller, new_id(), BILL, 5)
    await make_parents(engine, dispatcher, 3)

    result = await link_bill_parent(engine, biller, new_id(), "b-001", " sb00001 ")

    assert result.outcome == Outcome.OK
    assert result.message == "SB00001 added to bill B-001 (1/5)"
    assert result.data["bill"]["status"] == "processing"
    assert result.data["parent"] == {"code": "SB00001", "children": 3, "status": "pending"}
    assert (await bill_row(engine)).status == "processing"
    assert await parents_on(engine) == ["SB00001"]
    assert [event.kind for event in result.events] == ["bill.bag_linked"]


async def test_unregistered_bag_cannot_go_on_a_bill(engine, biller):
    await create_bill(engine, biller, new_id(), BILL, 5)

    result = await link_bill_parent(engine, biller, new_id(), BILL, "SB99999")

    assert_rejected(result, "BAG_NOT_FOUND", "Bag SB99999 is not registered")
    assert (await bill_row(engine)).status == "new"


async def test_child_bag_cannot_go_on_a_bill(engine, biller, dispatcher):
    await create_bill(engine, biller, new_id(), BILL, 5)
    await make_parents(engine, dispatcher, 1)

    result = await link_bill_parent(engine, biller, new_id(), BILL, "P1C0")

    assert_rejected(result, "BAG_IS_CHILD")
    assert "P1C0 is a child bag" in result.message
    assert await parents_on(engine) == []


async def test_parent_on_another_bill_is_refused_naming_that_bill(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 5, 0)
    await create_bill(engine, biller, new_id(), "B-002", 5)

    result = await link_bill_parent(engine, biller, new_id(), "B-002", "SB00001")

    assert_rejected(result, "PARENT_ON_OTHER_BILL", "Bag SB00001 is already linked to bill B-001")
    assert await parents_on(engine, "B-002") == []
    assert (await bill_row(engine, "B-002")).status == "new"


async def test_linking_the_same_parent_to_the_same_bill_again_is_a_duplicate(
    engine, biller, dispatcher
):
    await bill_with_parents(engine, biller, dispatcher, 5, 0)
    before = await table_counts(engine)

    result = await link_bill_parent(engine, biller, new_id(), BILL, "sb00001")

    assert result.outcome == Outcome.DUPLICATE
    assert result.message == "SB00001 is already on bill B-001 (1/5)"
    after = await table_counts(engine)
    # Only the command itself is recorded, so that a replay answers the same.
    assert after == {**before, "scan": before["scan"] + 1}


async def test_full_bill_refuses_another_parent(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 2, 0, 0)
    await make_parents(engine, dispatcher, 0, 0, 0)  # SB00001..SB00003; only SB00003 is new

    result = await link_bill_parent(engine, biller, new_id(), BILL, "SB00003")

    assert_rejected(result, "BILL_FULL", "Bill capacity reached (2/2)")
    assert await parents_on(engine) == ["SB00001", "SB00002"]


async def test_parents_with_any_number_of_children_may_go_on_a_bill(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 3, 0, 29, 30)

    assert await parents_on(engine) == ["SB00001", "SB00002", "SB00003"]


async def test_completed_bill_takes_no_parents_until_reopened_with_room(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 2, 0, 0)
    await complete_bill(engine, biller, new_id(), BILL)
    await scan_parent(engine, dispatcher, new_id(), "SB00003")

    on_completed = await link_bill_parent(engine, biller, new_id(), BILL, "SB00003")
    await reopen_bill(engine, biller, new_id(), BILL)
    on_reopened_full = await link_bill_parent(engine, biller, new_id(), BILL, "SB00003")
    await edit_bill(engine, biller, new_id(), BILL, capacity=3)
    on_enlarged = await link_bill_parent(engine, biller, new_id(), BILL, "SB00003")

    assert_rejected(on_completed, "BILL_COMPLETED")
    assert_rejected(on_reopened_full, "BILL_FULL", "Bill capacity reached (2/2)")
    assert on_enlarged.message == "SB00003 added to bill B-001 (3/3)"
    assert await parents_on(engine) == ["SB00001", "SB00002", "SB00003"]


# Removing parents.


async def test_removed_parent_is_free_for_another_bill(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 5, 2, 0)

    result = await remove_bill_parent(engine, biller, new_id(), BILL, "sb00001")

    assert result.outcome == Outcome.OK
    assert result.message == "SB00001 removed from bill B-001 (1/5)"
    assert result.data["bill"]["actual_weight_kg"] == 0
    assert [event.kind for event in result.events] == ["bill.bag_removed"]
    assert await parents_on(engine) == ["SB00002"]
    await create_bill(engine, biller, new_id(), "B-002", 5)
    assert (await link_bill_parent(engine, biller, new_id(), "B-002", "SB00001")).ok


async def test_removing_a_parent_that_is_not_on_the_bill_is_refused(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 5, 0)
    await make_parents(engine, dispatcher, 0, 0)

    for code in ("SB00002", "SB99999"):
        result = await remove_bill_parent(engine, biller, new_id(), BILL, code)
        assert_rejected(result, "PARENT_NOT_ON_BILL", f"Bag {code} is not on bill B-001.")
    assert await parents_on(engine) == ["SB00001"]


async def test_removing_a_parent_from_a_completed_bill_puts_it_back_in_processing(
    engine, biller, dispatcher
):
    await bill_with_parents(engine, biller, dispatcher, 1, 0)
    await complete_bill(engine, biller, new_id(), BILL)

    await remove_bill_parent(engine, biller, new_id(), BILL, "SB00001")

    assert (await bill_row(engine)).status == "processing"


# Completing, reopening, deleting.


@pytest.mark.parametrize(
    ("capacity", "linked", "message"),
    [(3, 0, "Need 3 more bags"), (3, 1, "Need 2 more bags"), (3, 2, "Need 1 more bag")],
)
async def test_bill_completes_only_when_every_place_is_filled(
    engine, biller, dispatcher, capacity, linked, message
):
    await bill_with_parents(engine, biller, dispatcher, capacity, *[0] * linked)

    result = await complete_bill(engine, biller, new_id(), BILL)

    assert_rejected(result, "BILL_NOT_FULL", message)
    assert (await bill_row(engine)).status != "completed"


async def test_full_bill_completes(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 2, 4, 6)

    result = await complete_bill(engine, biller, new_id(), BILL)

    assert result.outcome == Outcome.OK
    assert result.message == "Bill B-001 completed (2/2)"
    assert result.data["bill"]["status"] == "completed"
    assert [event.kind for event in result.events] == ["bill.completed"]
    assert (await bill_row(engine)).status == "completed"


async def test_completing_a_completed_bill_is_a_duplicate(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 1, 0)
    await complete_bill(engine, biller, new_id(), BILL)

    result = await complete_bill(engine, biller, new_id(), BILL)

    assert result.outcome == Outcome.DUPLICATE
    assert result.events == ()


async def test_reopened_bill_goes_back_to_processing(engine, biller, dispatcher):
    await bill_with_parents(engine, biller, dispatcher, 1, 0)
    await complete_bill(engine, biller, new_id(), BILL)

    result = await reopen_bill(engine, biller, new_id(), BILL)

    assert result.outcome == Outcome.OK
    assert result.message == "Bill B-001 reopened (1/1)"
    assert (await bill_row(engine)).status == "processing"
    assert await parents_on(engine) == ["SB00001"]


async def test_only_a_completed_bill_can_be_reopened(engine, biller):
    await create_bill(engine, biller, new_id(), BILL, 1)

    result = await reopen_bill(engine, biller, new_id(), BILL)

    assert_rejected(result, "BILL_NOT_COMPLETED")
    assert (await bill_row(engine)).status == "new"


async def test_admin_deletes_a_bill_and_its_parents_are_free_again(
    engine, admin, biller, dispatcher
):
    await bill_with_parents(engine, biller, dispatcher, 5, 1, 0)

    result = await delete_bill(engine, admin, new_id(), "b-001")

    assert result.outcome == Outcome.OK
    assert "2 parent bags" in result.message
    assert [event.kind for event in result.events] == ["bill.deleted"]
    assert await bill_row(engine) is None
    assert await value(engine, "SELECT count(*) FROM bill_parent") == 0
    assert await value(engine, "SELECT count(*) FROM bag WHERE kind = 'parent'") == 2
    await create_bill(engine, biller, new_id(), "B-002", 5)
    assert (await link_bill_parent(engine, biller, new_id(), "B-002", "SB00001")).ok


async def test_biller_cannot_delete_a_bill(engine, biller):
    await create_bill(engine, biller, new_id(), BILL, 5)
    before = await table_counts(engine)

    result = await delete_bill(engine, biller, new_id(), BILL)

    assert_rejected(result, "FORBIDDEN")
    assert await table_counts(engine) == before


async def test_deleting_an_unknown_bill_is_refused(engine, admin):
    assert_rejected(await delete_bill(engine, admin, new_id(), "NOPE"), "BILL_NOT_FOUND")


# Weights.


async def test_actual_weight_is_one_kilogram_per_child_and_expected_is_thirty_per_place(
    engine, biller, dispatcher
):
    await create_bill(engine, biller, new_id(), BILL, 4)
    await make_parents(engine, dispatcher, 3, 5)

    first = await link_bill_parent(engine, biller, new_id(), BILL, "SB00001")
    second = await link_bill_parent(engine, biller, new_id(), BILL, "SB00002")

    assert (first.data["bill"]["actual_weight_kg"], first.data["bill"]["children"]) == (3, 3)
    assert second.data["bill"]["actual_weight_kg"] == 8
    assert second.data["bill"]["expected_weight_kg"] == 4 * 30
    linked_children = await value(
        engine,
        "SELECT count(*) FROM link JOIN bill_parent ON bill_parent.parent_id = link.parent_id",
    )
    assert linked_children == 8


async def test_weights_follow_children_scanned_after_the_parent_went_on_the_bill(
    engine, biller, dispatcher
):
    await bill_with_parents(engine, biller, dispatcher, 4, 2)
    await link_child(engine, dispatcher, new_id(), "SB00001", "LATE1")
    await link_child(engine, dispatcher, new_id(), "SB00001", "LATE2")

    result = await edit_bill(engine, biller, new_id(), BILL, description="reweighed")

    assert result.data["bill"]["children"] == 4
    assert result.data["bill"]["actual_weight_kg"] == 4


# Audit and outbox.


async def test_every_bill_change_is_audited_and_announced_in_its_own_transaction(
    engine, biller, dispatcher, admin
):
    await make_parents(engine, dispatcher, 1)
    biller = replace(biller, request_id="req-42", ip="10.0.0.x")
    changes = [
        ("bill.create", "bill.created", create_bill(engine, biller, new_id(), BILL, 1)),
        ("bill.edit", "bill.updated", edit_bill(engine, biller, new_id(), BILL, description="d")),
        (
            "bill.link_parent",
            "bill.bag_linked",
            link_bill_parent(engine, biller, new_id(), BILL, "SB00001"),
        ),
        ("bill.complete", "bill.completed", complete_bill(engine, biller, new_id(), BILL)),
        ("bill.reopen", "bill.updated", reopen_bill(engine, biller, new_id(), BILL)),
        (
            "bill.remove_parent",
            "bill.bag_removed",
            remove_bill_parent(engine, biller, new_id(), BILL, "SB00001"),
        ),
        ("bill.delete", "bill.deleted", delete_bill(engine, admin, new_id(), BILL)),
    ]
    for action, kind, change in changes:
        result = await change
        assert result.ok, result.message
        audit = (await rows(engine, "SELECT xmin::text AS tx, * FROM audit ORDER BY id DESC"))[0]
        event = (await rows(engine, "SELECT xmin::text AS tx, * FROM event ORDER BY id DESC"))[0]
        scan = (await rows(engine, "SELECT xmin::text AS tx, * FROM scan ORDER BY id DESC"))[0]
        assert (audit.action, audit.entity_type, audit.entity_id) == (action, "bill", BILL)
        assert (event.kind, event.area, event.id) == (kind, None, result.events[0].id)
        assert event.payload["bill"]["number"] == BILL
        assert audit.tx == event.tx == scan.tx
        if action != "bill.delete":
            assert audit.after["number"] == BILL
            assert audit.actor_id == biller.user_id
            assert (audit.request_id, audit.ip) == ("req-42", "10.0.0.x")
    audited = await rows(engine, "SELECT before, after FROM audit WHERE action = 'bill.edit'")
    assert (audited[0].before["description"], audited[0].after["description"]) == ("", "d")


async def test_refused_bill_change_writes_no_audit_and_no_event(engine, biller):
    await create_bill(engine, biller, new_id(), BILL, 2)
    before = await table_counts(engine)

    refused = await complete_bill(engine, biller, new_id(), BILL)

    assert refused.outcome == Outcome.REJECTED
    after = await table_counts(engine)
    assert (after["audit"], after["event"]) == (before["audit"], before["event"])
