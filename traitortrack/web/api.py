"""The JSON API: scans for non-websocket clients, and missed events over HTTP (SPEC §8)."""

from quart import Blueprint, jsonify, request

from traitortrack.realtime.outbox import replay_after
from traitortrack.runtime import runtime
from traitortrack.services.commands import Actor
from traitortrack.services.people import list_areas
from traitortrack.services.stats import wall_figures
from traitortrack.version import VERSION
from traitortrack.web.access import SCANNING, STAFF, account, api
from traitortrack.web.commands import BadMessage, perform
from traitortrack.web.hooks import origin
from traitortrack.web.inputs import json_body
from traitortrack.web.viewers import viewer, watching

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_EVENTS = 1_000


@blueprint.post("/scans")
@api(SCANNING)
async def post_scan() -> object:
    body = await json_body()
    if not isinstance(body, dict):
        return jsonify(error="Send a JSON object like the websocket's scan message."), 400
    # Undo and finish go over /ws: a body naming another type must not turn this into them.
    if body.get("type", "scan") != "scan":
        return jsonify(error="POST /api/v1/scans takes scans only (undo and finish: /ws)."), 400
    who = account()
    assert who is not None
    where = origin()
    actor = Actor(who.id, who.username, who.role, who.area, where.request_id, where.ip)
    state = runtime()
    if not state.quotas.take_scan(who.id):
        await state.quotas.tripped("scan_rate", who.id, who.username, where)
        return jsonify(error=state.quotas.too_fast), 429, {"Retry-After": "1"}
    try:
        ack = await perform(state.engine, actor, {**body, "type": "scan"})
    except BadMessage as error:
        return jsonify(error=str(error)), 400
    state.live.bus.kick()
    ack.pop("type")
    return jsonify(ack)


@blueprint.get("/events")
@api(STAFF)
async def missed_events() -> object:
    """Events after ``after`` that this user may see, up to what this worker has delivered, and
    those at or below it that committed after it was handed out (the caller ignores ids it has).
    ``last_event_id`` is the ``after`` of the next call."""
    raw = request.args.get("after", "")
    if not raw.isdigit() or len(raw) > 18:
        return jsonify(error="'after' must be a non-negative whole number (an event id)."), 400
    after = int(raw)
    who = account()
    assert who is not None
    areas = sorted(who.audience) if who.audience is not None else None
    state = runtime()
    position = state.live.hub.position
    async with state.engine.connect() as conn:
        missed = await replay_after(conn, after, position, areas, MAX_EVENTS)
    if missed is None:
        return jsonify(type="resync", reason="too far behind: reload"), 410
    events, more = missed.events, missed.more
    last = events[-1].id if more else position
    return jsonify(events=[e.to_json() for e in events], last_event_id=last, more=more)


@blueprint.get("/stats")
@watching("api", STAFF)
async def stats() -> object:
    """Today's figures as the caller may see them (a dispatcher: their area; a display link:
    its areas), from the hub's counters and indexed reads: never a row updated per scan.

    ``position`` is the last event the figures include: a live client applies only later ones.
    ``?areas=a,b`` narrows the feed and the per-minute counts to those areas.
    """
    state, who = runtime(), viewer()
    hub = state.live.hub
    asked = frozenset(filter(None, request.args.get("areas", "").split(","))) or None
    narrowed = asked if who.audience is None else who.audience & (asked or who.audience)
    # Read together, with no await between: all as of ``position``.
    position = hub.position
    counters = hub.counters.snapshot(who.audience)
    per_minute = hub.counters.rates.series(narrowed, state.clock())
    figures = await wall_figures(state.engine, position, narrowed)
    areas = [
        {"name": a.name, "label": a.label}
        for a in await list_areas(state.engine)
        if who.audience is None or a.name in who.audience
    ]
    system = state.monitor.latest if state.monitor is not None else {}
    return jsonify(
        version=VERSION,
        position=position,
        counters=counters,
        per_minute=per_minute,
        areas=areas,
        clients=system.get("clients", {}),
        **figures,
    )
