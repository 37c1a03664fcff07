"""Fan-out capacity of one worker, two workers, and two app processes, in the same run
(issue 8, target 5).

    python -m bench fanout [--rate 100] [--worker-cpu 0.5] [--steps 500,1000,...] [--write]

Fan-out capacity is the most event deliveries per second (events x the walls each is shown on)
that a configuration keeps up with at a fixed scan rate: event-to-display p99 <= 250 ms, the
asked rate acked, and no wall dropped or told to resync. Walls are added in ``--steps`` until a
step misses; the capacity is the last step that held. Every wall sees every event, so
deliveries/s = scans/s x walls; each wall also gets ``COALESCE_HZ`` event frames and
``COUNTERS_HZ`` counter frames a second, which is what a worker's event loop pays for.

Each worker is capped at ``--worker-cpu`` of a CPU (a cgroup, so it needs root; 0 for no cap).
The figure is what a worker adds, so a worker must be what runs out first: on this 2-core
machine PostgreSQL, Redis and the load generator (which reads every frame every wall is sent)
share the cores with the servers, and uncapped, one worker already takes most of what they
leave (measured: 4,000 walls at 82 % of a core with the machine busy), so a second one has
little to grow into. Capped, each worker has the same share whichever configuration it is in,
like one core each of a bigger machine; the uncapped figures are reported too.

Configurations, each on a scratch database of its own and the same Redis:

- 1 worker: ``traitortrack serve --workers 1`` (Redis bus, like the others);
- 2 workers: ``traitortrack serve --workers 2``, the kernel spreading sockets over them;
- 2 processes: two ``traitortrack serve --workers 1`` on two ports, clients split between them
  (two machines behind a load balancer, on one machine).

PostgreSQL, Redis, the servers and this load generator share the machine's CPUs, so each
row also gives the server's CPU: the per-worker figure that docs/scaling.md builds on.
"""

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from bench.scratch import publish, scratch_database
from bench.ws_load import TARGET_P99_MS, Load, Phase, measure, passed, start_servers
from traitortrack.realtime.hub import COALESCE_HZ, COUNTERS_HZ

HEADING = "## Fan-out capacity: one worker, two workers, two processes (issue 8, target 5)"
TARGET_RATIO = 1.6
CONFIGS = (("1 worker", 1, 1), ("2 workers", 2, 1), ("2 processes", 1, 2))
STEPS = [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 7000, 8000, 10000]


@dataclass
class Capacity:
    name: str
    steps: list[Phase]
    held: Phase | None  # the last step within the target
    rate: float

    @property
    def deliveries(self) -> float:
        return deliveries(self.held, self.rate) if self.held else 0.0


def deliveries(step: Phase, rate: float) -> float:
    """Events shown per second over all walls (acks of parents opened on the way count as
    scans too, so the acked rate can pass the asked one: the asked rate caps it)."""
    return min(step.scans_per_s, rate) * step.walls


async def capacity(
    name: str, workers: int, processes: int, args: argparse.Namespace, url: str, directory: Path
) -> Capacity:
    servers = await start_servers(
        url, directory / name, workers, processes, args.redis, args.worker_cpu
    )
    load = await Load.start(servers, args.scanners)
    steps: list[Phase] = []
    held = None
    try:
        await load.add_measuring_walls(args.measuring)
        for walls in args.steps:
            await load.add_reading_walls(walls - load.open_walls)
            await asyncio.sleep(2)
            step = await measure(f"{walls}", load, args.rate, args.seconds, args.warmup)
            steps.append(step)
            print(
                f"  {name}: {walls} walls p99 {step.display_p99:.0f} ms, "
                f"{step.scans_per_s:.0f} scans/s, dropped {step.dropped}",
                flush=True,
            )
            if not passed(step, args.rate):
                break
            held = step
    finally:
        load.close()
        for server in servers:
            server.stop()
    return Capacity(name, steps, held, args.rate)


def report(results: list[Capacity], args: argparse.Namespace, load: float) -> str:
    rows = [
        "| configuration | walls | scans/s | event-to-display p99 ms | deliveries/s "
        "| wall frames/s | server CPU (% of a core) | machine CPU busy | server RSS MB "
        "| dropped/resynced | held |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        for step in result.steps:
            rows.append(
                f"| {result.name} | {step.walls:,} | {step.scans_per_s:,.0f} "
                f"| {step.display_p99:.0f} | {deliveries(step, args.rate):,.0f} "
                f"| {step.walls * (COALESCE_HZ + COUNTERS_HZ):,} | {step.server_cpu_pct:.0f} % "
                f"| {step.machine_cpu_pct:.0f} % | {step.server_rss_mb:.0f} "
                f"| {step.dropped}/{step.resyncs} "
                f"| {'yes' if passed(step, args.rate) else 'no'} |"
            )
    one = results[0].deliveries
    summary = [
        "| configuration | capacity (deliveries/s) | walls | ratio to 1 worker | target "
        "| verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results[1:]:
        ratio = result.deliveries / one if one else float("nan")
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        walls = result.held.walls if result.held else 0
        summary.append(
            f"| {result.name} | {result.deliveries:,.0f} | {walls:,} | {ratio:.2f}x "
            f"| >= {TARGET_RATIO}x | **{verdict}** |"
        )
    walls_one = results[0].held.walls if results[0].held else 0
    cap = (f"Each worker capped at {args.worker_cpu:g} of a CPU (a cgroup). " if args.worker_cpu
           else "No CPU cap. ")  # fmt: skip
    summary.insert(2, f"| 1 worker (baseline) | {one:,.0f} | {walls_one:,} | 1.00x | | |")
    return "\n".join(
        [
            f"{args.rate} scans/s from {args.scanners} scanner sockets; walls added in steps of "
            f"{', '.join(f'{s:,}' for s in args.steps)} ({args.measuring} of them time every "
            f"scan), {args.seconds} s measured after {args.warmup} s of warm-up per step; a step "
            f"holds with p99 <= {TARGET_P99_MS:.0f} ms, >= 95 % of the rate acked and no wall "
            f"dropped. Redis bus in every configuration. {cap}{os.cpu_count()} CPUs shared by "
            f"PostgreSQL, Redis, the servers and this benchmark; Python "
            f"{platform.python_version()}, load average {load:.1f} before the run, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
            *rows,
            "",
            *summary,
        ]
    )


async def main_async(args: argparse.Namespace) -> bool:
    load = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="tt-fanout-") as directory:
        for name, workers, processes in CONFIGS:
            (Path(directory) / name).mkdir()
            async with scratch_database() as (database_url, postgres):
                results.append(
                    await capacity(name, workers, processes, args, database_url, Path(directory))
                )
    body = report(results, args, load)
    publish(body, args.write, HEADING, "python -m bench fanout", "bench/fanout.py", postgres)
    one = results[0].deliveries
    return bool(one) and all(r.deliveries >= TARGET_RATIO * one for r in results[1:])


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench fanout", description=summary)
    parser.add_argument("--rate", type=int, default=100, help="scans per second (default 100)")
    parser.add_argument("--scanners", type=int, default=100, help="scanner sockets (default 100)")
    parser.add_argument(
        "--steps",
        type=lambda text: [int(n) for n in text.split(",")],
        default=STEPS,
        help=f"walls open at each step (default {','.join(map(str, STEPS))})",
    )
    parser.add_argument(
        "--worker-cpu",
        type=float,
        default=0.5,
        help="share of a CPU each worker may use (a cgroup; needs root); 0: no cap (default 0.5)",
    )
    parser.add_argument("--measuring", type=int, default=20, help="walls that time (default 20)")
    parser.add_argument("--seconds", type=float, default=6, help="measured per step")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up per step")
    parser.add_argument(
        "--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    return 0 if uvloop.run(main_async(parser.parse_args(argv))) else 1


if __name__ == "__main__":
    sys.exit(main())
