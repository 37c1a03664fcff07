"""The events the services write to the outbox, and their JSON shape (SPEC §8).

Nothing else builds event payloads by hand.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    PARENT_SCANNED = "parent.scanned"
    CHILD_LINKED = "child.linked"
    CHILD_UNLINKED = "child.unlinked"
    PARENT_COMPLETED = "parent.completed"
    BAG_DELETED = "bag.deleted"
    BILL_CREATED = "bill.created"
    BILL_UPDATED = "bill.updated"
    BILL_BAG_LINKED = "bill.bag_linked"
    BILL_BAG_REMOVED = "bill.bag_removed"
    BILL_COMPLETED = "bill.completed"
    BILL_DELETED = "bill.deleted"
    USER_CHANGED = "user.changed"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet written: the outbox assigns its id and time."""

    kind: EventKind
    area: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    at: str
    area: str | None
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "at": self.at,
            "area": self.area,
            "data": self.data,
        }


def parent_json(code: str, children: int, status: str) -> dict[str, Any]:
    return {"code": code, "children": children, "status": str(status)}


def user_changed(user_id: int, sessions_revoked: bool = False, deleted: bool = False) -> NewEvent:
    """Only the id and what happened: it names nobody. Every worker re-checks the open sockets
    of that account when it arrives (rights, area, session), so a change takes effect there at
    once; no area: area-bound screens are not sent it."""
    return NewEvent(
        EventKind.USER_CHANGED,
        None,
        {"user_id": user_id, "sessions_revoked": sessions_revoked, "deleted": deleted},
    )
