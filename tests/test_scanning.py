"""SPEC §2 scanning (scan a parent, link children, undo, finish) and SPEC §4 bag deletion."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.conftest import make_actor
from tests.db import new_id, rows, value
from traitortrack.domain.outcomes import Outcome
from traitortrack.domain.roles import Role
from traitortrack.services.bags import delete_bag
from traitortrack.services.bills import create_bill, link_bill_parent
from traitortrack.services.scans import finish_parent, link_child, scan_parent, undo_last_child

PARENT = "SB12345"
OTHER_PARENT = "SB11111"
FULL = "Parent bag is full! Maximum 30 child bags per parent."
NO_PARENT = "No parent bag selected. Please scan a parent bag first."
ONE_ROLE = "One bag can only have one role — parent or child, never both."


async def bag(engine, code: str):
    found = await rows(engine, "SELECT * FROM bag WHERE code = :code", code=code)
    return found[0] if found else None


async def children_of(engine, parent: str) -> list[str]:
    return [
        row.code
        for row in await rows(
            engine,
            "SELECT c.code FROM link JOIN bag c ON c.id = link.child_id "
            "JOIN bag p ON p.id = link.parent_id WHERE p.code = :parent ORDER BY c.code",
            parent=parent,
        )
    ]


async def event_kinds(engine) -> list[str]:
    return [row.kind for row in await rows(engine, "SELECT kind FROM event ORDER BY id")]


async def parent_with_children(engine, actor, parent: str, count: int, prefix: str = "C") -> None:
    assert (await scan_parent(engine, actor, new_id(), parent)).ok
    for number in range(count):
        result = await link_child(engine, actor, new_id(), parent, f"{prefix}{number:04d}")
        assert result.ok, result.message


def assert_rejected(result, error: str, message: str | None = None) -> None:
    assert result.outcome == Outcome.REJECTED
    assert result.error == error
    if message is not None:
        assert result.message == message


@pytest.fixture
async def lucknow_dispatcher(engine):
    return await make_actor(engine, Role.DISPATCHER, "lucknow")


# Scanning a parent.


async def test_new_parent_is_created_in_the_scanners_area_and_owned_by_the_scanner(
    engine, dispatcher
):
    result = await scan_parent(engine, dispatcher, new_id(), " sb12345\n")

    assert result.outcome == Outcome.OK
    assert result.message == "SB12345 created (0/30), scan child bags"
    assert result.data == {"parent": {"code": PARENT, "children": 0, "status": "pending"}}
    stored = await bag(engine, PARENT)
    assert (stored.kind, stored.area, stored.owner_id) == ("parent", "jaipur", dispatcher.user_id)
    assert (stored.status, stored.child_count) == ("pending", 0)
    assert [event.kind for event in result.events] == ["parent.scanned"]
    assert result.events[0].data["created"] is True
    assert result.events[0].area == "jaipur"


async def test_scanning_an_existing_parent_shows_its_count_and_creates_nothing(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 12)

    result = await scan_parent(engine, dispatcher, new_id(), "sb12345")

    assert result.outcome == Outcome.OK
    assert result.message == "SB12345: 12/30, continue adding children"
    assert result.data["parent"] == {"code": PARENT, "children": 12, "status": "pending"}
    assert result.events[0].data["created"] is False
    assert await value(engine, "SELECT count(*) FROM bag WHERE kind = 'parent'") == 1


async def test_every_parent_scan_is_recorded_whether_new_or_existing(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    recorded = await rows(
        engine, "SELECT action, code, area, outcome, user_id FROM scan ORDER BY id"
    )
    assert [tuple(row) for row in recorded] == [
        ("scan_parent", PARENT, "jaipur", "ok", dispatcher.user_id)
    ] * 2


async def test_scanning_a_completed_parent_says_it_is_complete(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 30)

    result = await scan_parent(engine, dispatcher, new_id(), PARENT)

    assert result.outcome == Outcome.OK
    assert result.message == "SB12345 is complete (30/30)"


async def test_child_code_scanned_as_a_parent_is_rejected_and_stays_a_child(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 0)
    assert (await link_child(engine, dispatcher, new_id(), PARENT, "SB54321")).ok

    result = await scan_parent(engine, dispatcher, new_id(), "sb54321")

    assert_rejected(
        result,
        "BAG_IS_CHILD",
        f"QR code SB54321 is already registered as a child bag. {ONE_ROLE}",
    )
    assert (await bag(engine, "SB54321")).kind == "child"
    assert await value(engine, "SELECT outcome FROM scan ORDER BY id DESC LIMIT 1") == "rejected"


@pytest.mark.parametrize("code", ["SB1234", "SB123456", "M444-1234", "ABC123", "SB12345!"])
async def test_badly_formatted_parent_code_is_rejected_and_creates_nothing(
    engine, dispatcher, code
):
    result = await scan_parent(engine, dispatcher, new_id(), code)

    assert_rejected(result, "INVALID_CODE")
    assert result.message in {
        "Parent bag QR must be format SB##### (e.g., SB00001) or M444-##### (e.g., M444-00001)",
        "QR code contains invalid characters",
    }
    assert await value(engine, "SELECT count(*) FROM bag") == 0


async def test_dispatcher_cannot_scan_a_parent_of_another_area(
    engine, dispatcher, lucknow_dispatcher
):
    await scan_parent(engine, lucknow_dispatcher, new_id(), PARENT)

    result = await scan_parent(engine, dispatcher, new_id(), PARENT)

    assert_rejected(result, "WRONG_AREA")
    assert "lucknow" in result.message
    assert "jaipur" in result.message


async def test_admin_may_scan_a_parent_of_any_area(engine, admin, lucknow_dispatcher):
    await scan_parent(engine, lucknow_dispatcher, new_id(), PARENT)

    result = await scan_parent(engine, admin, new_id(), PARENT)

    assert result.outcome == Outcome.OK
    assert (await bag(engine, PARENT)).area == "lucknow"


@pytest.mark.parametrize("role", [Role.BILLER, Role.SUPERVISOR])
async def test_roles_without_scanning_rights_cannot_scan(engine, role):
    actor = await make_actor(engine, role)

    result = await scan_parent(engine, actor, new_id(), PARENT)

    assert_rejected(result, "FORBIDDEN")
    assert await value(engine, "SELECT count(*) FROM bag") == 0
    assert await value(engine, "SELECT count(*) FROM scan") == 0


# Linking children.


async def test_linked_child_is_created_in_the_parents_area_and_counted(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    result = await link_child(engine, dispatcher, new_id(), "sb12345", " abc123\r\n")

    assert result.outcome == Outcome.OK
    assert result.message == "ABC123 linked (1/30)"
    assert result.data == {"parent": {"code": PARENT, "children": 1, "status": "pending"}}
    child = await bag(engine, "ABC123")
    assert (child.kind, child.area, child.owner_id) == ("child", "jaipur", dispatcher.user_id)
    assert (await bag(engine, PARENT)).child_count == 1
    assert await children_of(engine, PARENT) == ["ABC123"]
    assert [event.kind for event in result.events] == ["child.linked"]
    assert result.events[0].data["child"] == "ABC123"


async def test_each_child_raises_the_count_by_one(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    messages = [
        (await link_child(engine, dispatcher, new_id(), PARENT, f"KID{n}")).message
        for n in range(1, 4)
    ]

    assert messages == ["KID1 linked (1/30)", "KID2 linked (2/30)", "KID3 linked (3/30)"]
    assert (await bag(engine, PARENT)).child_count == 3


async def test_twenty_ninth_child_leaves_the_parent_pending(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 29)

    assert (await bag(engine, PARENT)).status == "pending"
    assert "parent.completed" not in await event_kinds(engine)


async def test_thirtieth_child_completes_the_parent(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 29)

    result = await link_child(engine, dispatcher, new_id(), PARENT, "LAST0030")

    assert result.outcome == Outcome.OK
    assert result.message == "LAST0030 linked (30/30)"
    assert result.data["parent"] == {"code": PARENT, "children": 30, "status": "completed"}
    assert [event.kind for event in result.events] == ["child.linked", "parent.completed"]
    parent = await bag(engine, PARENT)
    assert (parent.status, parent.child_count) == ("completed", 30)
    assert len(await children_of(engine, PARENT)) == 30
    # The completion is written by the transaction that linked the 30th child.
    same_transaction = await value(
        engine,
        "SELECT count(DISTINCT xmin::text) FROM event WHERE id = ANY(:ids)",
        ids=[event.id for event in result.events],
    )
    assert same_transaction == 1


async def test_thirty_first_child_is_refused_because_the_parent_is_full(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 30)

    result = await link_child(engine, dispatcher, new_id(), PARENT, "EXTRA31")

    assert_rejected(result, "PARENT_FULL", FULL)
    assert await bag(engine, "EXTRA31") is None
    assert (await bag(engine, PARENT)).child_count == 30


async def test_rescanning_a_child_of_the_same_parent_is_an_amber_duplicate(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 2)
    events_before = await value(engine, "SELECT count(*) FROM event")

    result = await link_child(engine, dispatcher, new_id(), PARENT, "c0001")

    assert result.outcome == Outcome.DUPLICATE
    assert result.message == "C0001 already scanned (2/30)"
    assert result.error is None
    assert result.events == ()
    assert await value(engine, "SELECT count(*) FROM event") == events_before
    assert (await bag(engine, PARENT)).child_count == 2
    assert await value(engine, "SELECT count(*) FROM link") == 2


async def test_rescanning_a_child_of_a_full_parent_is_still_a_duplicate(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 30)

    result = await link_child(engine, dispatcher, new_id(), PARENT, "C0029")

    assert result.outcome == Outcome.DUPLICATE
    assert result.message == "C0029 already scanned (30/30)"


async def test_child_linked_to_another_parent_is_rejected_naming_that_parent(engine, dispatcher):
    await parent_with_children(engine, dispatcher, OTHER_PARENT, 1)
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    result = await link_child(engine, dispatcher, new_id(), PARENT, "C0000")

    assert_rejected(
        result,
        "CHILD_LINKED_ELSEWHERE",
        "Child bag C0000 is already linked to parent bag SB11111.",
    )
    assert await children_of(engine, OTHER_PARENT) == ["C0000"]
    assert await children_of(engine, PARENT) == []


@pytest.mark.parametrize(
    ("count", "noun"), [(0, "child bags"), (1, "child bag"), (2, "child bags")]
)
async def test_parent_code_scanned_as_a_child_is_rejected_naming_its_child_count(
    engine, dispatcher, count, noun
):
    await parent_with_children(engine, dispatcher, OTHER_PARENT, count)
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    result = await link_child(engine, dispatcher, new_id(), PARENT, OTHER_PARENT)

    assert_rejected(
        result,
        "BAG_IS_PARENT",
        f"QR code SB11111 is already registered as a parent bag with {count} {noun}. {ONE_ROLE}",
    )
    assert (await bag(engine, OTHER_PARENT)).kind == "parent"
    assert await children_of(engine, PARENT) == []


async def test_parent_cannot_be_linked_to_itself(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    result = await link_child(engine, dispatcher, new_id(), PARENT, "sb12345")

    assert_rejected(result, "SELF_LINK", "Cannot link SB12345 to itself.")
    assert await value(engine, "SELECT count(*) FROM link") == 0


@pytest.mark.parametrize("parent", [None, ""])
async def test_child_scan_without_a_parent_asks_for_a_parent_first(engine, dispatcher, parent):
    result = await link_child(engine, dispatcher, new_id(), parent, "ABC123")

    assert_rejected(result, "NO_PARENT", NO_PARENT)
    assert await value(engine, "SELECT count(*) FROM bag") == 0


async def test_child_scan_into_an_unregistered_parent_is_refused_and_creates_nothing(
    engine, dispatcher
):
    result = await link_child(engine, dispatcher, new_id(), "SB99999", "ABC123")

    assert_rejected(result, "PARENT_NOT_FOUND")
    assert "SB99999 is not registered" in result.message
    assert await value(engine, "SELECT count(*) FROM bag") == 0


async def test_child_scan_naming_a_child_as_its_parent_is_refused(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 0)
    await link_child(engine, dispatcher, new_id(), PARENT, "SB54321")

    result = await link_child(engine, dispatcher, new_id(), "SB54321", "ABC123")

    assert_rejected(result, "BAG_IS_CHILD")
    assert await bag(engine, "ABC123") is None


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ABC-123", "Child bag QR must be 4-20 alphanumeric characters"),
        ("M444-00001", "Child bag QR must be 4-20 alphanumeric characters"),
        ("A" * 21, "Child bag QR must be 4-20 alphanumeric characters"),
        ("AB", "QR code too short (min 4 characters)"),
        ("AB C1", "QR code contains invalid characters"),
    ],
)
async def test_badly_formatted_child_code_is_rejected_and_creates_nothing(
    engine, dispatcher, code, message
):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    result = await link_child(engine, dispatcher, new_id(), PARENT, code)

    assert_rejected(result, "INVALID_CODE", message)
    assert await value(engine, "SELECT count(*) FROM bag WHERE kind = 'child'") == 0


async def test_dispatcher_cannot_link_into_a_parent_of_another_area(
    engine, dispatcher, lucknow_dispatcher
):
    await scan_parent(engine, lucknow_dispatcher, new_id(), PARENT)

    result = await link_child(engine, dispatcher, new_id(), PARENT, "ABC123")

    assert_rejected(result, "WRONG_AREA")
    assert await bag(engine, "ABC123") is None


async def test_admin_links_into_any_area_and_the_child_takes_the_parents_area(
    engine, admin, lucknow_dispatcher
):
    await scan_parent(engine, lucknow_dispatcher, new_id(), PARENT)

    result = await link_child(engine, admin, new_id(), PARENT, "ABC123")

    assert result.ok
    assert (await bag(engine, "ABC123")).area == "lucknow"


async def test_database_holds_one_bag_per_code_whatever_its_case(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    for statement in (
        "INSERT INTO bag (code, kind) VALUES ('SB12345', 'child')",
        "INSERT INTO bag (code, kind) VALUES ('sb12345', 'child')",
    ):
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    assert await value(engine, "SELECT count(*) FROM bag") == 1


# Undo.


async def test_undo_removes_only_the_most_recent_child(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 3)

    result = await undo_last_child(engine, dispatcher, new_id(), PARENT)

    assert result.outcome == Outcome.OK
    assert result.message == "Removed C0002 from SB12345 (2/30)"
    assert result.data == {
        "parent": {"code": PARENT, "children": 2, "status": "pending"},
        "child": "C0002",
    }
    assert [event.kind for event in result.events] == ["child.unlinked"]
    assert await children_of(engine, PARENT) == ["C0000", "C0001"]
    assert (await bag(engine, PARENT)).child_count == 2
    # The child bag itself remains, free to be linked again.
    assert (await bag(engine, "C0002")).kind == "child"


async def test_undone_child_can_be_linked_into_another_parent(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 1)
    await undo_last_child(engine, dispatcher, new_id(), PARENT)
    await scan_parent(engine, dispatcher, new_id(), OTHER_PARENT)

    result = await link_child(engine, dispatcher, new_id(), OTHER_PARENT, "C0000")

    assert result.message == "C0000 linked (1/30)"
    assert await children_of(engine, OTHER_PARENT) == ["C0000"]


async def test_undo_of_a_link_older_than_an_hour_is_refused(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 2)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE link SET created_at = now() - interval '2 hours'"))

    result = await undo_last_child(engine, dispatcher, new_id(), PARENT)

    assert_rejected(result, "UNDO_TOO_LATE")
    assert "1 hour" in result.message
    assert len(await children_of(engine, PARENT)) == 2
    assert (await bag(engine, PARENT)).child_count == 2


async def test_undo_just_within_the_hour_is_allowed(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 1)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE link SET created_at = now() - interval '59 minutes'"))

    result = await undo_last_child(engine, dispatcher, new_id(), PARENT)

    assert result.ok
    assert await children_of(engine, PARENT) == []


async def test_undo_by_another_dispatcher_is_refused(engine, dispatcher):
    colleague = await make_actor(engine, Role.DISPATCHER, "jaipur")
    await parent_with_children(engine, dispatcher, PARENT, 1)

    result = await undo_last_child(engine, colleague, new_id(), PARENT)

    assert_rejected(result, "UNDO_NOT_YOURS")
    assert await children_of(engine, PARENT) == ["C0000"]


async def test_admin_may_undo_another_users_link(engine, dispatcher, admin):
    await parent_with_children(engine, dispatcher, PARENT, 1)

    result = await undo_last_child(engine, admin, new_id(), PARENT)

    assert result.ok
    assert await children_of(engine, PARENT) == []


async def test_undoing_the_thirtieth_child_makes_the_parent_pending_again(engine, dispatcher):
    await parent_with_children(engine, dispatcher, PARENT, 30)

    result = await undo_last_child(engine, dispatcher, new_id(), PARENT)

    assert result.data["parent"] == {"code": PARENT, "children": 29, "status": "pending"}
    parent = await bag(engine, PARENT)
    assert (parent.status, parent.child_count) == ("pending", 29)
    relinked = await link_child(engine, dispatcher, new_id(), PARENT, "NEW30")
    assert relinked.message == "NEW30 linked (30/30)"
    assert (await bag(engine, PARENT)).status == "completed"


async def test_undo_with_no_children_is_refused(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    result = await undo_last_child(engine, dispatcher, new_id(), PARENT)

    assert_rejected(result, "NOTHING_TO_UNDO")


@pytest.mark.parametrize("parent", [None, ""])
async def test_undo_without_a_parent_asks_for_a_parent_first(engine, dispatcher, parent):
    assert_rejected(await undo_last_child(engine, dispatcher, new_id(), parent), "NO_PARENT")


async def test_undo_on_a_parent_of_another_area_is_refused(engine, dispatcher, lucknow_dispatcher):
    await parent_with_children(engine, lucknow_dispatcher, PARENT, 1)

    result = await undo_last_child(engine, dispatcher, new_id(), PARENT)

    assert_rejected(result, "WRONG_AREA")
    assert await children_of(engine, PARENT) == ["C0000"]


# Finishing a parent early.


async def test_finishing_a_parent_early_keeps_it_pending_and_it_resumes_when_scanned(
    engine, dispatcher
):
    await parent_with_children(engine, dispatcher, PARENT, 5)

    result = await finish_parent(engine, dispatcher, new_id(), PARENT)

    assert result.outcome == Outcome.OK
    assert "5/30" in result.message
    assert result.data["parent"] == {"code": PARENT, "children": 5, "status": "pending"}
    parent = await bag(engine, PARENT)
    assert (parent.status, parent.child_count) == ("pending", 5)
    resumed = await scan_parent(engine, dispatcher, new_id(), PARENT)
    assert resumed.message == "SB12345: 5/30, continue adding children"
    assert (await link_child(engine, dispatcher, new_id(), PARENT, "SIXTH")).message == (
        "SIXTH linked (6/30)"
    )


async def test_finishing_an_unregistered_parent_is_refused(engine, dispatcher):
    result = await finish_parent(engine, dispatcher, new_id(), "SB99999")

    assert_rejected(result, "PARENT_NOT_FOUND")
    assert await value(engine, "SELECT count(*) FROM bag") == 0


# Deleting bags (SPEC §4).


async def test_admin_deletes_an_unused_parent(engine, dispatcher, admin):
    await scan_parent(engine, dispatcher, new_id(), PARENT)

    result = await delete_bag(engine, admin, new_id(), "sb12345")

    assert result.outcome == Outcome.OK
    assert result.message == "Bag SB12345 deleted"
    assert await bag(engine, PARENT) is None
    assert [event.kind for event in result.events] == ["bag.deleted"]
    audit = await rows(engine, "SELECT actor_id, entity_id FROM audit WHERE action = 'bag.delete'")
    assert [tuple(row) for row in audit] == [(admin.user_id, PARENT)]


async def test_admin_deletes_a_child_that_is_no_longer_linked(engine, dispatcher, admin):
    await parent_with_children(engine, dispatcher, PARENT, 1)
    await undo_last_child(engine, dispatcher, new_id(), PARENT)

    result = await delete_bag(engine, admin, new_id(), "C0000")

    assert result.ok
    assert await bag(engine, "C0000") is None


@pytest.mark.parametrize("role", [Role.DISPATCHER, Role.BILLER, Role.SUPERVISOR])
async def test_only_admins_may_delete_bags(engine, dispatcher, role):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    actor = dispatcher if role == Role.DISPATCHER else await make_actor(engine, role)

    result = await delete_bag(engine, actor, new_id(), PARENT)

    assert_rejected(result, "FORBIDDEN")
    assert await bag(engine, PARENT) is not None


async def test_parent_on_a_bill_cannot_be_deleted(engine, dispatcher, admin):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    await create_bill(engine, admin, new_id(), "BILL-7", 5)
    await link_bill_parent(engine, admin, new_id(), "BILL-7", PARENT)

    result = await delete_bag(engine, admin, new_id(), PARENT)

    assert_rejected(result, "PARENT_ON_BILL")
    assert "BILL-7" in result.message
    assert await bag(engine, PARENT) is not None


async def test_parent_with_children_cannot_be_deleted(engine, dispatcher, admin):
    await parent_with_children(engine, dispatcher, PARENT, 2)

    result = await delete_bag(engine, admin, new_id(), PARENT)

    assert_rejected(result, "PARENT_HAS_CHILDREN")
    assert "2 child bags" in result.message
    assert await bag(engine, PARENT) is not None


async def test_linked_child_cannot_be_deleted(engine, dispatcher, admin):
    await parent_with_children(engine, dispatcher, PARENT, 1)

    result = await delete_bag(engine, admin, new_id(), "C0000")

    assert_rejected(result, "CHILD_LINKED")
    assert PARENT in result.message
    assert await children_of(engine, PARENT) == ["C0000"]


async def test_deleting_an_unknown_bag_is_refused(engine, admin):
    result = await delete_bag(engine, admin, new_id(), "NOPE1")

    assert_rejected(result, "BAG_NOT_FOUND", "Bag NOPE1 is not registered")
