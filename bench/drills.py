"""Failure drills, run longer than CI runs them (tests/test_drills.py): a table per drill of
what each run lost, doubled, left out of walls, and how long acks paused (issue 16).

    python -m bench drills [--drill NAME ...] [--repeat 1] [--after 15] [--write]

Each run starts ``traitortrack serve --workers 2`` on a private PostgreSQL cluster and Redis
(tests/drills.py), scans with 10 scanners (about 30 scans/s) and 5 walls, applies the fault,
keeps the load on for ``--after`` seconds once the fault is over, and counts. ``--write`` puts
the tables under "Measured" in docs/reliability.md.
"""

import argparse
import asyncio
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import asyncpg

from bench.docs import write_section
from tests.drills import BOUNDS, FAULTS, Result, Timing, run_drill
from tests.live_cluster import PostgresCluster, private_postgres

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
HEADING = "## Measured"
COLUMNS = (
    "run | acked ok | acked lost | doubled | wall gaps | resyncs | counter drift"
    " | fault lasted | worst ack pause | recovery | new conns failing | tracebacks | errors seen"
)


def row(n: int, r: Result) -> str:
    recovery = "never" if r.recovery_s is None else f"{r.recovery_s:.1f} s"
    failing = r.notes.get("new connections failing (s)", 0.0)
    return (
        f"| {n} | {r.scans_acked_ok} | {r.acked_lost} | {r.doubled} | {r.wall_gaps}"
        f" | {r.wall_resyncs} | {r.counter_drift} | {r.fault_s:.1f} s"
        f" | {r.worst_ack_pause_s:.1f} s | {recovery} | {failing:.1f} s | {r.tracebacks}"
        f" | {r.errors_text()} |"
    )


def table(name: str, results: list[Result]) -> str:
    lines = [f"### {name}", "", f"| {COLUMNS} |", "|" + " --- |" * (COLUMNS.count("|") + 1)]
    lines += [row(n, r) for n, r in enumerate(results, 1)]
    notes = {key: [r.notes[key] for r in results] for key in results[0].notes}
    if notes:
        lines.append("")
        lines += [f"- {key}: {', '.join(str(v) for v in values)}" for key, values in notes.items()]
    broken = [f"run {n}: {'; '.join(b)}" for n, r in enumerate(results, 1)
              if (b := BOUNDS[name].broken(r))]  # fmt: skip
    if broken:
        lines += [
            "",
            "Beyond the drill's bounds (tests/drills.py, BOUNDS):",
            *(f"- {line}" for line in broken),
        ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> tuple[str, str]:
    timing = replace(
        Timing(), warmup_s=args.warmup, after_s=args.after, redis_down_s=args.redis_down
    )
    sections = []
    with private_postgres() as pg:
        template = await pg.migrated_template()
        version = await _version(pg)
        for name in args.drill or list(FAULTS):
            results = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(prefix="tt-drill-") as directory:
                    results.append(await run_drill(name, pg, template, Path(directory), timing))
                print(row(len(results), results[-1]), flush=True)
            sections.append(table(name, results))
            print(sections[-1], flush=True)
    return "\n\n".join(sections), version


async def _version(pg: PostgresCluster) -> str:
    conn = await asyncpg.connect(pg.url())
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench drills")
    parser.add_argument("--drill", action="append", choices=list(FAULTS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=15.0)
    parser.add_argument("--redis-down", type=float, default=10.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    body, postgres = asyncio.run(run(args))
    command = "python -m bench drills " + " ".join(argv)
    source = f"{platform.node()}, {platform.machine()}, Python {platform.python_version()}"
    print(body)
    if args.write:
        write_section(HEADING, command.strip(), source, body, postgres, DOC)
        print(f"written to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
