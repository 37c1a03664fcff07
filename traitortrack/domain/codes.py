"""Bag QR codes: the one place that decides what a valid code is (SPEC §1)."""

import re
from typing import Literal

BagKind = Literal["parent", "child"]

MAX_LENGTH = 100
MIN_LENGTH = 4

# ASCII-only classes: Python's \d and \w would accept other scripts' digits and letters.
_ALLOWED = re.compile(r"[A-Z0-9-]+")
_PARENT = re.compile(r"SB[0-9]{5}|M444-[0-9]{5}")
_CHILD = re.compile(r"[A-Z0-9]{4,20}")
# The scanner page decides parent-or-child with the same pattern (a JavaScript RegExp too).
PARENT_PATTERN = _PARENT.pattern

EMPTY = "QR code cannot be empty"
TOO_LONG = f"QR code too long (max {MAX_LENGTH} characters)"
TOO_SHORT = f"QR code too short (min {MIN_LENGTH} characters)"
INVALID_CHARACTERS = "QR code contains invalid characters"
BAD_PARENT_FORMAT = (
    "Parent bag QR must be format SB##### (e.g., SB00001) or M444-##### (e.g., M444-00001)"
)
BAD_CHILD_FORMAT = "Child bag QR must be 4-20 alphanumeric characters"


class InvalidBagCode(ValueError):
    """A code that breaks a rule; ``str()`` is the message shown to the user."""


def normalize_code(raw: str | None, kind: BagKind | None = None) -> str:
    """Return the normalised code, or raise :class:`InvalidBagCode` naming the first broken rule."""
    if raw is None or raw == "":
        raise InvalidBagCode(EMPTY)
    if not isinstance(raw, str):
        raise InvalidBagCode(INVALID_CHARACTERS)
    code = raw.strip()
    # Upper-case ASCII only: str.upper() turns some non-ASCII letters into ASCII ones
    # (the long s becomes "S", "ß" becomes "SS"), which would let a non-ASCII scan pass.
    if code.isascii():
        code = code.upper()
    if len(code) > MAX_LENGTH:
        raise InvalidBagCode(TOO_LONG)
    if len(code) < MIN_LENGTH:
        raise InvalidBagCode(TOO_SHORT)
    if not _ALLOWED.fullmatch(code):
        raise InvalidBagCode(INVALID_CHARACTERS)
    if kind == "parent" and not _PARENT.fullmatch(code):
        raise InvalidBagCode(BAD_PARENT_FORMAT)
    if kind == "child" and not _CHILD.fullmatch(code):
        raise InvalidBagCode(BAD_CHILD_FORMAT)
    return code
