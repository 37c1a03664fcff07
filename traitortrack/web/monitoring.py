"""Admins' live system health (SPEC §6) and the Prometheus scrape endpoint.

``/system_health`` draws the last hour from ``/system_health/history`` and then follows the
metrics frames of ``/ws?view=metrics``. ``/metrics`` is for admins, or for a Prometheus server
that presents ``METRICS_TOKEN`` as a Bearer token.
"""

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from quart import Blueprint, Response, jsonify, render_template, request

from traitortrack.monitoring import probes, prometheus
from traitortrack.runtime import runtime
from traitortrack.services.accounts import select_pauses
from traitortrack.web.access import ADMIN, api, page

blueprint = Blueprint("monitoring", __name__)


@blueprint.after_app_request
async def count_response(response: Response) -> Response:
    probes.response_sent(response.status_code)
    return response


@blueprint.get("/system_health")
@page(ADMIN)
async def system_health() -> str:
    state = runtime()
    return await render_template(
        "monitoring/system_health.html",
        slow_query_ms=state.settings.slow_query_ms,
        pauses=await select_pauses(state.engine, state.clock()),
    )


@blueprint.get("/system_health/history")
@api(ADMIN)
async def system_health_history() -> Response:
    monitor = runtime().monitor
    assert monitor is not None
    return jsonify(history=monitor.history.columns(), latest=monitor.latest)


def _scrape_token_ok() -> bool:
    expected = runtime().settings.metrics_token
    given = request.headers.get("Authorization", "")
    return bool(expected) and hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())


def admin_or_scrape_token(view: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """Admins' sessions, or the configured scrape token (declared as admin-only: the token is
    a machine's credential, not a role)."""
    for_admins = api(ADMIN)(view)

    @wraps(view)
    async def guarded() -> Any:
        return await (view() if _scrape_token_ok() else for_admins())

    guarded.access = for_admins.access  # type: ignore[attr-defined]
    return guarded


@blueprint.get("/metrics")
@admin_or_scrape_token
async def metrics() -> Response:
    monitor = runtime().monitor
    if monitor is not None:
        monitor.set_gauges()  # this worker's gauges as of now; the others' are a second old
    body = await asyncio.to_thread(prometheus.exposition)
    return Response(body, content_type=prometheus.CONTENT_TYPE)
