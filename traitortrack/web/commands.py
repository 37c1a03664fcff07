"""Scan, undo and finish messages, as they arrive over the websocket or ``POST /api/v1/scans``.

Parsing is strict (SPEC §8): anything malformed gets a clear message and changes nothing.
"""

from typing import Any

from traitortrack.domain.outcomes import Outcome
from traitortrack.monitoring import probes
from traitortrack.services import scans
from traitortrack.services.commands import Actor, Result
from traitortrack.web.access import SCANNING

KINDS = ("parent", "child")
# Messages about the scanner's current parent: {"type": ..., "id": <uuid>, "parent": "SB12345"}.
ON_PARENT = {"undo": scans.undo_last_child, "finish": scans.finish_parent}


class BadMessage(ValueError):
    """A message that cannot be acted on; ``str()`` says why."""


def _ack(client_id: object, result: Result) -> dict[str, Any]:
    ack: dict[str, Any] = {
        "type": "ack",
        "id": client_id,
        "outcome": str(result.outcome),
        "message": result.message,
    }
    if result.error:
        ack["error"] = result.error
    if "parent" in result.data:
        ack["parent"] = result.data["parent"]
    return ack


def refusal(client_id: object, message: str) -> dict[str, Any]:
    return {"type": "ack", "id": client_id, "outcome": Outcome.REJECTED.value, "message": message}


@probes.timed
async def perform(engine: Any, actor: Actor, message: dict[str, Any]) -> dict[str, Any]:
    """Run one ``scan``, ``undo`` or ``finish`` message; returns the ack for the sender."""
    kind = message.get("type")
    client_id = message.get("id")
    if not isinstance(client_id, str) or not client_id:
        raise BadMessage("Every scan needs an 'id' (a UUID made by the client).")
    if actor.role not in SCANNING:
        return refusal(client_id, "Your role does not allow scanning.")
    if kind in ON_PARENT:
        use_case = ON_PARENT[kind]
        return _ack(client_id, await use_case(engine, actor, client_id, message.get("parent")))
    scan_as = message.get("as")
    if scan_as not in KINDS:
        raise BadMessage("A scan needs 'as': 'parent' or 'child'.")
    if scan_as == "parent":
        result = await scans.scan_parent(engine, actor, client_id, message.get("code"))
    else:
        result = await scans.link_child(
            engine, actor, client_id, message.get("parent"), message.get("code")
        )
    return _ack(client_id, result)
