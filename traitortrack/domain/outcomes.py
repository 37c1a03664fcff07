"""What every use case answers: ``ok``, ``duplicate`` or ``rejected`` with a message (SPEC §2)."""

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class RuleBroken(Exception):
    """A business rule refused the request.

    ``code`` is machine-readable (clients and tests branch on it); ``message`` is for people.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadInput(RuleBroken):
    """The request itself is malformed or names something that does not exist.

    Unlike other refusals these are not recorded: they change nothing at all.
    """
