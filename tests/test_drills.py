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

from tests.drills import BOUNDS, Timing, run_drill
from tests.live_cluster import PostgresCluster, private_postgres

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

CI = Timing()
STORM_WELCOMED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[PostgresCluster, str]]:
    with private_postgres() as cluster:
        yield cluster, asyncio.run(cluster.migrated_template())


async def drill(postgres, tmp_path, name: str, timing: Timing = CI):
    cluster, template = postgres
    result = await run_drill(name, cluster, template, tmp_path, timing)
    print(result)
    broken = BOUNDS[name].broken(result)
    logs = "\n".join(p.name for p in tmp_path.glob("*.log"))
    assert not broken, f"{name}: {broken}\n{result}\nlogs: {tmp_path} ({logs})"
    return result


async def test_killing_the_relay_leader_loses_no_acked_scan_and_no_wall_event(postgres, tmp_path):
    await drill(postgres, tmp_path, "kill -9 relay leader")


async def test_killing_a_worker_that_does_not_relay_loses_no_acked_scan(postgres, tmp_path):
    await drill(postgres, tmp_path, "kill -9 non-leader")


async def test_a_deploy_loses_nothing_and_new_connections_succeed_soon_after(postgres, tmp_path):
    result = await drill(postgres, tmp_path, "deploy")
    assert result.notes["old serve exit code"] == 0, result.notes
    assert result.notes["old workers left"] == 0, result.notes


async def test_redis_killed_and_restarted_never_stops_acks_or_walls(postgres, tmp_path):
    await drill(postgres, tmp_path, "Redis killed")


async def test_redis_hung_for_ten_seconds_never_stops_acks_or_sign_in(postgres, tmp_path):
    await drill(postgres, tmp_path, "Redis hung")


async def test_a_fast_postgresql_restart_loses_no_acked_scan(postgres, tmp_path):
    await drill(postgres, tmp_path, "PostgreSQL restart -m fast")


async def test_an_immediate_postgresql_restart_loses_no_acked_scan(postgres, tmp_path):
    await drill(postgres, tmp_path, "PostgreSQL restart -m immediate")


async def test_five_hundred_sockets_at_once_are_all_welcomed_while_scans_flow(postgres, tmp_path):
    result = await drill(postgres, tmp_path, "500 sockets at once")
    assert result.notes["storm sockets welcomed"] == CI.storm_sockets, result.notes
    assert result.notes["storm seconds to welcome all"] <= STORM_WELCOMED_WITHIN_S, result.notes
