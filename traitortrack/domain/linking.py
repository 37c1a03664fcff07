"""Rules for linking child bags into parents (SPEC §2). Pure: callers pass in what they read."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from traitortrack.domain.outcomes import BadInput, RuleBroken

MAX_CHILDREN = 30
CHILD_WEIGHT_KG = 1
UNDO_WINDOW = timedelta(hours=1)


class BagStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class ParentState:
    code: str
    children: int
    status: BagStatus

    @property
    def is_full(self) -> bool:
        return self.children >= MAX_CHILDREN or self.status == BagStatus.COMPLETED

    def progress(self) -> str:
        return f"{self.children}/{MAX_CHILDREN}"


@dataclass(frozen=True, slots=True)
class ExistingChild:
    """What the database holds for a scanned child code, when it holds anything."""

    is_parent: bool
    children: int
    linked_parent: str | None


def no_parent_selected() -> BadInput:
    return BadInput("NO_PARENT", "No parent bag selected. Please scan a parent bag first.")


def parent_not_registered(code: str) -> BadInput:
    return BadInput(
        "PARENT_NOT_FOUND",
        f"Parent bag {code} is not registered. Please scan it as a parent first.",
    )


def registered_as_child(code: str) -> RuleBroken:
    return RuleBroken(
        "BAG_IS_CHILD",
        f"QR code {code} is already registered as a child bag. "
        "One bag can only have one role — parent or child, never both.",
    )


def registered_as_parent(code: str, children: int) -> RuleBroken:
    return RuleBroken(
        "BAG_IS_PARENT",
        f"QR code {code} is already registered as a parent bag with {children} "
        f"child bag{'s' if children != 1 else ''}. "
        "One bag can only have one role — parent or child, never both.",
    )


def outside_area(code: str, bag_area: str | None, user_area: str | None) -> RuleBroken:
    return RuleBroken(
        "WRONG_AREA",
        f"Bag {code} belongs to dispatch area {bag_area or 'none'}; "
        f"you can only scan bags of {user_area or 'your area'}.",
    )


def parent_scanned_message(parent: ParentState, created: bool) -> str:
    if created:
        return f"{parent.code} created ({parent.progress()}), scan child bags"
    if parent.status == BagStatus.COMPLETED:
        return f"{parent.code} is complete ({parent.progress()})"
    return f"{parent.code}: {parent.progress()}, continue adding children"


def check_link(parent: ParentState, child_code: str, existing: ExistingChild | None) -> bool:
    """Decide a child scan. True: link it; False: it is already in this parent (duplicate).

    Raises :class:`RuleBroken` with the message the scanner shows.
    """
    if child_code == parent.code:
        raise RuleBroken("SELF_LINK", f"Cannot link {child_code} to itself.")
    if existing is not None and existing.is_parent:
        raise registered_as_parent(child_code, existing.children)
    if existing is not None and existing.linked_parent == parent.code:
        # Re-scanning a child that is already in this parent is harmless, even when full.
        return False
    if parent.is_full:
        raise RuleBroken(
            "PARENT_FULL", f"Parent bag is full! Maximum {MAX_CHILDREN} child bags per parent."
        )
    if existing is not None and existing.linked_parent is not None:
        raise RuleBroken(
            "CHILD_LINKED_ELSEWHERE",
            f"Child bag {child_code} is already linked to parent bag {existing.linked_parent}.",
        )
    return True


def duplicate_message(child_code: str, parent: ParentState) -> str:
    return f"{child_code} already scanned ({parent.progress()})"


def linked_message(child_code: str, parent: ParentState) -> str:
    return f"{child_code} linked ({parent.progress()})"


def status_for(children: int) -> BagStatus:
    """The 30th child completes a parent; dropping below 30 (undo) makes it pending again."""
    return BagStatus.COMPLETED if children >= MAX_CHILDREN else BagStatus.PENDING


def check_undo(
    linked_at: datetime, linked_by: int | None, actor_id: int, actor_is_admin: bool, now: datetime
) -> None:
    if now - linked_at > UNDO_WINDOW:
        raise RuleBroken(
            "UNDO_TOO_LATE",
            "The last child was linked more than 1 hour ago; it can no longer be undone.",
        )
    if linked_by != actor_id and not actor_is_admin:
        raise RuleBroken(
            "UNDO_NOT_YOURS",
            "Only the person who scanned the last child, or an admin, can undo it.",
        )


def weight_kg(children: int) -> int:
    return children * CHILD_WEIGHT_KG
