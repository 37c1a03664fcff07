"""Liveness and readiness, for load balancers and deployment checks."""

import logging

from quart import Blueprint

from traitortrack.runtime import runtime
from traitortrack.web.access import public

blueprint = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@blueprint.get("/health")
@public
async def health() -> dict[str, str]:
    """The process is up and answering; says nothing about its dependencies."""
    return {"status": "ok"}


@blueprint.get("/ready")
@public
async def ready() -> tuple[dict[str, object], int]:
    """Ready to take traffic: the database answers, and so does the bus when configured."""
    state = runtime()
    checks: dict[str, str] = {}
    for name, check in (("database", state.check_database), ("bus", state.check_bus)):
        try:
            await check()
            checks[name] = "ok"
        except Exception as error:  # any failure means "not ready"; the reason is logged
            log.warning("readiness check failed", extra={"check": name, "error": repr(error)})
            checks[name] = "unavailable"
    if state.redis is None:
        checks["bus"] = "in-process"
    healthy = all(value in {"ok", "in-process"} for value in checks.values())
    return {"status": "ok" if healthy else "unavailable", "checks": checks}, 200 if healthy else 503
