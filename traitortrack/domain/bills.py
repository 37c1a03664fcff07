"""Rules for bills, the dispatch documents that group parent bags (SPEC §3)."""

from dataclasses import dataclass
from enum import StrEnum

from traitortrack.domain.linking import CHILD_WEIGHT_KG, MAX_CHILDREN
from traitortrack.domain.outcomes import BadInput, RuleBroken

MIN_CAPACITY = 1
MAX_CAPACITY_ON_CREATE = 50
MAX_CAPACITY = 100
MAX_NUMBER_LENGTH = 50
MAX_DESCRIPTION_LENGTH = 500
EXPECTED_KG_PER_PARENT = MAX_CHILDREN * CHILD_WEIGHT_KG


class BillStatus(StrEnum):
    NEW = "new"
    PROCESSING = "processing"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class BillTotals:
    """Counts and weights of a bill, derived from its links every time (never cached)."""

    capacity: int
    linked: int
    children: int

    @property
    def actual_weight_kg(self) -> int:
        return self.children * CHILD_WEIGHT_KG

    @property
    def expected_weight_kg(self) -> int:
        return self.capacity * EXPECTED_KG_PER_PARENT

    def progress(self) -> str:
        return f"{self.linked}/{self.capacity}"


def normalize_bill_number(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadInput("BILL_NUMBER_REQUIRED", "Bill number is required.")
    number = raw.strip()
    if len(number) > MAX_NUMBER_LENGTH:
        raise BadInput(
            "BILL_NUMBER_TOO_LONG", f"Bill number too long (max {MAX_NUMBER_LENGTH} characters)."
        )
    if not number.isprintable():
        raise BadInput("BILL_NUMBER_INVALID", "Bill number contains invalid characters.")
    return number


def normalize_description(raw: object) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise BadInput("DESCRIPTION_INVALID", "Description must be text.")
    description = raw.strip()
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise BadInput(
            "DESCRIPTION_TOO_LONG",
            f"Description too long (max {MAX_DESCRIPTION_LENGTH} characters).",
        )
    # PostgreSQL text can hold neither NUL nor a lone surrogate (UTF-8 cannot encode one).
    if "\x00" in description or any("\ud800" <= char <= "\udfff" for char in description):
        raise BadInput("DESCRIPTION_INVALID", "Description contains invalid characters.")
    return description


def _as_int(raw: object) -> int:
    # bool is an int subclass; "True parent bags" is not a capacity.
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadInput("CAPACITY_INVALID", "Capacity must be a whole number.")
    try:
        return int(raw)
    except ValueError:
        raise BadInput("CAPACITY_INVALID", "Capacity must be a whole number.") from None


def capacity_for_new_bill(raw: object) -> int:
    capacity = _as_int(raw)
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY_ON_CREATE:
        raise BadInput(
            "CAPACITY_OUT_OF_RANGE",
            f"Capacity must be between {MIN_CAPACITY} and {MAX_CAPACITY_ON_CREATE} parent bags.",
        )
    return capacity


def capacity_for_edit(raw: object, linked: int) -> int:
    capacity = _as_int(raw)
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY:
        raise BadInput(
            "CAPACITY_OUT_OF_RANGE",
            f"Capacity must be between {MIN_CAPACITY} and {MAX_CAPACITY} parent bags.",
        )
    if capacity < linked:
        raise RuleBroken(
            "CAPACITY_BELOW_LINKED",
            f"Capacity cannot be below the {linked} parent bags already linked.",
        )
    return capacity


def bill_exists(number: str) -> RuleBroken:
    return RuleBroken("BILL_EXISTS", f"Bill {number} already exists")


def bill_not_found(number: str) -> BadInput:
    return BadInput("BILL_NOT_FOUND", f"Bill {number} not found.")


def bag_not_registered(code: str) -> BadInput:
    return BadInput("BAG_NOT_FOUND", f"Bag {code} is not registered")


def check_link_parent(totals: BillTotals, status: BillStatus, bill_number: str) -> None:
    if status == BillStatus.COMPLETED:
        raise RuleBroken(
            "BILL_COMPLETED", f"Bill {bill_number} is completed; reopen it to add bags."
        )
    if totals.linked >= totals.capacity:
        raise RuleBroken("BILL_FULL", f"Bill capacity reached ({totals.progress()})")


def bag_is_child(code: str) -> RuleBroken:
    return RuleBroken("BAG_IS_CHILD", f"Bag {code} is a child bag; only parent bags go on bills.")


def parent_on_other_bill(code: str, bill_number: str) -> RuleBroken:
    return RuleBroken("PARENT_ON_OTHER_BILL", f"Bag {code} is already linked to bill {bill_number}")


def check_complete(totals: BillTotals) -> None:
    missing = totals.capacity - totals.linked
    if missing > 0:
        raise RuleBroken("BILL_NOT_FULL", f"Need {missing} more bag{'s' if missing != 1 else ''}")


def status_after_change(totals: BillTotals, status: BillStatus) -> BillStatus:
    """A completed bill that drops below its capacity (removal, larger capacity) reopens."""
    if status == BillStatus.COMPLETED and totals.linked < totals.capacity:
        return BillStatus.PROCESSING
    if status == BillStatus.NEW and totals.linked > 0:
        return BillStatus.PROCESSING
    return status
