"""The JSON API: scans for non-websocket clients, and missed events over HTTP (SPEC §8)."""

from quart import Blueprint, jsonify, request

from traitortrack.realtime.outbox import events_between, oldest_id
from traitortrack.runtime import runtime
from traitortrack.services.commands import Actor
from traitortrack.web.access import SCANNING, STAFF, account, api
from traitortrack.web.commands import BadMessage, perform
from traitortrack.web.hooks import origin

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_EVENTS = 1_000


@blueprint.post("/scans")
@api(SCANNING)
async def post_scan() -> object:
    body = await request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        return jsonify(error="Send a JSON object like the websocket's scan message."), 400
    who = account()
    assert who is not None
    where = origin()
    actor = Actor(who.id, who.username, who.role, who.area, where.request_id, where.ip)
    state = runtime()
    try:
        ack = await perform(state.engine, actor, {"type": "scan", **body})
    except BadMessage as error:
        return jsonify(error=str(error)), 400
    state.live.bus.kick()
    ack.pop("type")
    return jsonify(ack)


@blueprint.get("/events")
@api(STAFF)
async def missed_events() -> object:
    """Events after ``after`` that this user may see, up to what this worker has delivered."""
    raw = request.args.get("after", "")
    if not raw.isdigit() or len(raw) > 18:
        return jsonify(error="'after' must be a non-negative whole number (an event id)."), 400
    after = int(raw)
    who = account()
    assert who is not None
    areas = [who.area] if who.role == "dispatcher" and who.area else None
    state = runtime()
    position = state.live.hub.position
    async with state.engine.connect() as conn:
        oldest = await oldest_id(conn)
        events = await events_between(conn, after, position, areas, MAX_EVENTS + 1)
    if after < oldest - 1:
        return jsonify(type="resync", reason="too far behind: reload"), 410
    more = len(events) > MAX_EVENTS
    events = events[:MAX_EVENTS]
    last = events[-1].id if more else position
    return jsonify(events=[e.to_json() for e in events], last_event_id=last, more=more)
