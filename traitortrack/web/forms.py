"""What the bill and bag pages share: who is acting, a client id per rendered form, and
messages that always end with what to do next.

Every form carries a hidden ``client_id`` made when the page was rendered. The services are
idempotent by it, so a double click or a resubmitted form answers as the first time and
changes nothing twice.
"""

import uuid
from dataclasses import dataclass
from typing import NoReturn

from quart import Response, abort, get_flashed_messages, render_template, request

from traitortrack.domain.outcomes import Outcome
from traitortrack.runtime import runtime
from traitortrack.services.commands import Actor, Result
from traitortrack.web.access import account
from traitortrack.web.hooks import origin

# The services say what went wrong; these say what to do about it, where the message alone
# does not.
NEXT_STEPS = {
    "BILL_EXISTS": "Use another number, or open the existing bill from the list.",
    "BILL_NOT_FOUND": "It may have been deleted: go back to the bill list.",
    "BILL_NUMBER_REQUIRED": "Type the number printed on the dispatch bill.",
    "BILL_NUMBER_TOO_LONG": "Shorten it and save again.",
    "BILL_NUMBER_INVALID": "Use letters, digits and punctuation only.",
    "BAG_NOT_FOUND": "Check the code; a parent bag must be scanned on the scanner first.",
    "BAG_IS_CHILD": "Scan the parent bag that holds it instead.",
    "PARENT_ON_OTHER_BILL": "Remove it from that bill first if it belongs on this one.",
    "BILL_FULL": "Raise the capacity (Edit) or remove a parent bag first.",
    "BILL_NOT_FULL": "Scan more parent bags, or lower the capacity, then complete it.",
    "CAPACITY_BELOW_LINKED": "Remove parent bags first, or choose a larger capacity.",
    "CAPACITY_INVALID": "Type a whole number of parent bags.",
    "CAPACITY_OUT_OF_RANGE": "Type a number in that range.",
    "DESCRIPTION_TOO_LONG": "Shorten the description and save again.",
    "DESCRIPTION_INVALID": "Remove unusual characters and save again.",
    "PARENT_NOT_ON_BILL": "Reload the page to see the bill's parent bags as they are now.",
    "BILL_NOT_COMPLETED": "Reload the page to see the bill as it is now.",
    "INVALID_CODE": "Scan the QR code again, or type it as printed.",
    "INVALID_CLIENT_ID": "Reload the page and try again.",
    "NOT_CONFIRMED": "Type it exactly as shown, then press the button again.",
}


@dataclass(frozen=True, slots=True)
class Notice:
    """A banner: ``ok``, ``warn`` (nothing changed, nothing wrong) or ``error``."""

    kind: str
    message: str

    @property
    def ok(self) -> bool:
        return self.kind != "error"


def acting() -> Actor:
    who = account()
    assert who is not None  # every caller is behind @page
    where = origin()
    return Actor(who.id, who.username, who.role, who.area, where.request_id, where.ip)


def new_client_id() -> str:
    return uuid.uuid4().hex


def with_next_step(message: str, error: str | None) -> str:
    step = NEXT_STEPS.get(error or "")
    if step is None:
        return message
    message = message.rstrip()
    return f"{message}{'' if message.endswith(('.', '!', '?')) else '.'} {step}"


def notice(result: Result) -> Notice:
    kind = {Outcome.OK: "ok", Outcome.DUPLICATE: "warn"}.get(result.outcome, "error")
    return Notice(kind, with_next_step(result.message, result.error))


def wants_json() -> bool:
    """The page's script asked (``Accept: application/json``); a plain form post did not."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def announce() -> None:
    """Events were just committed by this worker: publish them now, not at the next poll."""
    live = runtime().live
    if live is not None:
        live.bus.kick()


async def not_found(message: str) -> NoReturn:
    """Stop here with a 404 page that says what to do instead."""
    html = await render_template("errors/error.html", code=404, message=message)
    abort(Response(html, 404))


def flashed() -> list[Notice]:
    """What the last change said, carried across its redirect."""
    return [Notice(kind, message) for kind, message in get_flashed_messages(with_categories=True)]
