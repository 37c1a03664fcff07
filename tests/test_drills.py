"""Failure drills under scan load (issue 16): worker crashes, a deploy, Redis killed and hung,
PostgreSQL restarted, a connection storm. Each runs ``traitortrack serve --workers 2`` on a
private PostgreSQL cluster and Redis (tests/drills.py), with 10 scanners that resend what was
not acked and 5 walls that resume by last event id, and then checks the books: no acked scan
lost or doubled, no wall gap, counters equal to the database, acks flowing again within the
bound, no traceback. ``python -m bench drills`` runs the same drills longer
(docs/reliability.md)."""

import asyncio
from collections.abc import Iterator

import pytest

from tests.drills import (
    DEPLOY_GAP_S,
    Bounds,
    PostgresCluster,
    Timing,
    private_postgres,
    run_drill,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

CI = Timing()
# A worker killed with -9 is restarted by the runner after a second's back-off and a start-up
# of a few seconds on a busy machine; the scanners and new connections on its socket wait for
# it (the runner keeps the socket), so acks of those scanners pause that long.
# (Measured 8-13 s on the loaded 2-core machine, where a worker takes up to 10 s to start.)
AFTER_A_WORKER_RESTART = Bounds(recovery_s=20.0, new_connections_failing_s=20.0)
# A deploy: new connections fail only while no serve listens (the gap, and 2 s more); none after
# the new serve is ready, and acks flow 3 s after it is.
DEPLOY = Bounds(recovery_s=3.0, new_connections_failing_s=0.0, failure_window_s=DEPLOY_GAP_S + 2)
# Redis is not on the scan path: acks never pause for it.
REDIS = Bounds(worst_ack_pause_s=2.0)
# PostgreSQL away: scans are answered "not saved" and resent; sockets stay open, handshakes
# are not answered 500.
POSTGRES_DEFECTS = (
    "issue 16 defects 5 and 6: a PostgreSQL restart drops scanner sockets with 1011 and a"
    " traceback, handshakes answer 500, and dead connections go back into the pool"
)
POSTGRES = Bounds(recovery_s=3.0, forbidden_errors=("closed 1011", "handshake 500"))
STORM = Bounds(worst_ack_pause_s=3.0)
STORM_WELCOMED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[PostgresCluster, str]]:
    with private_postgres() as cluster:
        yield cluster, asyncio.run(cluster.migrated_template())


async def drill(postgres, tmp_path, name: str, bounds: Bounds, timing: Timing = CI):
    cluster, template = postgres
    result = await run_drill(name, cluster, template, tmp_path, timing)
    print(result)
    broken = bounds.broken(result)
    logs = "\n".join(p.name for p in tmp_path.glob("*.log"))
    assert not broken, f"{name}: {broken}\n{result}\nlogs: {tmp_path} ({logs})"
    return result


async def test_killing_the_relay_leader_loses_no_acked_scan_and_no_wall_event(postgres, tmp_path):
    await drill(postgres, tmp_path, "kill -9 relay leader", AFTER_A_WORKER_RESTART)


async def test_killing_a_worker_that_does_not_relay_loses_no_acked_scan(postgres, tmp_path):
    await drill(postgres, tmp_path, "kill -9 non-leader", AFTER_A_WORKER_RESTART)


@pytest.mark.xfail(
    reason="issue 16 defects 1 and 2: the old serve keeps its SO_REUSEPORT listeners open for"
    " ~30 s (new connections black-holed) and does not drain sockets that connected during its"
    " drain (cancelled with tracebacks at the graceful timeout)",
    strict=False,
)
async def test_a_deploy_loses_nothing_and_new_connections_succeed_soon_after(postgres, tmp_path):
    result = await drill(postgres, tmp_path, "deploy", DEPLOY)
    assert result.notes["old serve exit code"] == 0, result.notes
    assert result.notes["old workers left"] == 0, result.notes


async def test_redis_killed_and_restarted_never_stops_acks_or_walls(postgres, tmp_path):
    await drill(postgres, tmp_path, "Redis killed", REDIS)


@pytest.mark.xfail(
    reason="issue 16 defect 4: a hung Redis blocks sign-in (no socket timeout on the rate-limit"
    " store)",
    strict=False,
)
async def test_redis_hung_for_ten_seconds_never_stops_acks_or_sign_in(postgres, tmp_path):
    await drill(postgres, tmp_path, "Redis hung", REDIS)


@pytest.mark.xfail(reason=POSTGRES_DEFECTS, strict=False)
async def test_a_fast_postgresql_restart_loses_no_acked_scan(postgres, tmp_path):
    await drill(postgres, tmp_path, "PostgreSQL restart -m fast", POSTGRES)


@pytest.mark.xfail(reason=POSTGRES_DEFECTS, strict=False)
async def test_an_immediate_postgresql_restart_loses_no_acked_scan(postgres, tmp_path):
    await drill(postgres, tmp_path, "PostgreSQL restart -m immediate", POSTGRES)


async def test_five_hundred_sockets_at_once_are_all_welcomed_while_scans_flow(postgres, tmp_path):
    result = await drill(postgres, tmp_path, "500 sockets at once", STORM)
    assert result.notes["storm sockets welcomed"] == CI.storm_sockets, result.notes
    assert result.notes["storm seconds to welcome all"] <= STORM_WELCOMED_WITHIN_S, result.notes
