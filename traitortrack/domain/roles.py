"""Roles and what each may do (SPEC §4)."""

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    BILLER = "biller"
    DISPATCHER = "dispatcher"
    SUPERVISOR = "supervisor"


class Permission(StrEnum):
    SCAN = "scan"
    MANAGE_BILLS = "manage_bills"
    DELETE_BILL = "delete_bill"
    DELETE_BAG = "delete_bag"
    VIEW_ALL_AREAS = "view_all_areas"
    MANAGE_USERS = "manage_users"


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.BILLER: frozenset({Permission.MANAGE_BILLS, Permission.VIEW_ALL_AREAS}),
    Role.DISPATCHER: frozenset({Permission.SCAN}),
    Role.SUPERVISOR: frozenset({Permission.VIEW_ALL_AREAS}),
}

DEFAULT_AREAS = (
    "lucknow",
    "indore",
    "jaipur",
    "hisar",
    "sri_ganganagar",
    "sangaria",
    "bathinda",
    "raipur",
    "ranchi",
    "akola",
)
MAX_DISPATCHERS_PER_AREA = 10


def can(role: Role | str, permission: Permission) -> bool:
    try:
        return permission in _GRANTS[Role(role)]
    except ValueError:
        return False


def visible_to(area: str | None, audience: frozenset[str] | None) -> bool:
    """Whether what concerns dispatch ``area`` may be shown to ``audience`` (the areas a
    dispatcher or display link is bound to; None: every area). What concerns no area (bills,
    accounts, bags of no area) is for unbound audiences only."""
    return audience is None or (area is not None and area in audience)
