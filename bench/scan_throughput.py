"""Scan throughput: ``link_child`` through the service layer against raw asyncpg doing the same
writes, at the same concurrency, on the same scratch database (issue 3).

    python -m bench.scan_throughput [--scans 6000] [--concurrency 64] [--write]
    python -m bench scan ...

RAW is the floor of what one scan must cost: one transaction per scan on an asyncpg pool with
exactly the writes a scan needs (update the parent's count, insert the child, its link, the scan
row and the outbox event). SERVICE is ``traitortrack.services.scans.link_child`` on an engine from
``traitortrack.db.engine.create_engine``: idempotency lookup, parent lock, child lookup, the same
writes, SQLAlchemy on top. Both use the app's pool size (20 + 10 overflow), both are warmed up,
and each scans fresh parents (at most 30 children each) interleaved so that concurrent scans
rarely wait on the same parent. The figures go to stdout and, with ``--write``, to
docs/performance.md.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bench.scratch import in_scratch, libpq_url, publish
from traitortrack.config import Settings
from traitortrack.db.engine import create_engine
from traitortrack.db.migrate import migrate
from traitortrack.domain.roles import Role
from traitortrack.services.commands import Actor
from traitortrack.services.scans import link_child
from traitortrack.services.users import create_user

TARGET = 0.5
AREA = "jaipur"
PER_PARENT = 30
WARMUP_SCANS = 600
HEADING = "## Scan throughput (issue 3)"

RAW_SCAN = [
    """UPDATE bag SET child_count = child_count + 1, updated_at = now(),
         status = CASE WHEN child_count + 1 >= 30 THEN 'completed' ELSE 'pending' END
       WHERE code = $1 AND kind = 'parent' RETURNING id, child_count, status, area""",
    """INSERT INTO bag (code, kind, area, owner_id) VALUES ($1, 'child', $2, $3) RETURNING id""",
    """INSERT INTO link (child_id, parent_id, user_id, created_at)
       VALUES ($1, $2, $3, clock_timestamp())""",
    """INSERT INTO scan (user_id, client_id, action, code, parent_code, area, outcome, message,
         result) VALUES ($1, $2, 'link_child', $3, $4, $5, 'ok', $6, $7)""",
    """INSERT INTO event (kind, area, payload) VALUES ('child.linked', $1, $2)""",
]

Scan = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class Phase:
    name: str
    scans: int
    seconds: float
    cpu_seconds: float  # this process: the driver and, for the service, the app code too
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.scans / self.seconds

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[p - 1]


def parent_codes(first: int, count: int, prefix: str = "SB") -> list[str]:
    return [f"{prefix}{n:05d}" for n in range(first, first + count)]


async def add_parents(pool: asyncpg.Pool, codes: list[str], user_id: int) -> None:
    await pool.executemany(
        "INSERT INTO bag (code, kind, area, owner_id) VALUES ($1, 'parent', $2, $3)",
        [(code, AREA, user_id) for code in codes],
    )
    await pool.execute("VACUUM ANALYZE")


def raw_scan(pool: asyncpg.Pool, user_id: int) -> Scan:
    """A scan as the raw SQL floor: the ``RAW_SCAN`` writes, one transaction per scan."""

    async def raw(parent: str, child: str) -> None:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(RAW_SCAN[0], parent)
            child_id = await conn.fetchval(RAW_SCAN[1], child, row["area"], user_id)
            await conn.execute(RAW_SCAN[2], child_id, row["id"], user_id)
            state = {"code": parent, "children": row["child_count"], "status": row["status"]}
            message = f"{child} linked ({row['child_count']}/30)"
            await conn.execute(
                RAW_SCAN[3], user_id, str(uuid.uuid4()), child, parent, AREA, message,
                json.dumps({"parent": state}),
            )  # fmt: skip
            payload = {"parent": state, "child": child, "by": "bench"}
            await conn.execute(RAW_SCAN[4], row["area"], json.dumps(payload))

    return raw


def work_items(parents: list[str], tag: str) -> list[tuple[str, str]]:
    """(parent, child) pairs, child-major, so concurrent scans hit different parents."""
    return [(p, f"{tag}{i:05d}{k:02d}") for k in range(PER_PARENT) for i, p in enumerate(parents)]


async def drive(name: str, scan: Scan, items: list[tuple[str, str]], concurrency: int) -> Phase:
    queue = iter(items)
    latencies: list[float] = []

    async def worker() -> None:
        for parent, child in queue:
            began = time.perf_counter()
            await scan(parent, child)
            latencies.append((time.perf_counter() - began) * 1000)

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    return Phase(name, len(items), seconds, cpu, latencies)


def combine(name: str, phases: list[Phase]) -> Phase:
    return Phase(
        name,
        sum(p.scans for p in phases),
        sum(p.seconds for p in phases),
        sum(p.cpu_seconds for p in phases),
        [ms for p in phases for ms in p.latencies_ms],
    )


async def run(args: argparse.Namespace, settings: Settings, dsn: str) -> tuple[Phase, Phase]:
    """Warm both paths up, then measure them in turn (``--rounds`` times, alternating)."""
    engine = create_engine(settings)
    pool_size = settings.db_pool_size + settings.db_max_overflow
    pool = await asyncpg.create_pool(
        dsn, min_size=pool_size, max_size=pool_size, server_settings={"jit": "off"}
    )
    try:
        await migrate(engine)
        user_id = await create_user(engine, "bench", "Bench-pass1", Role.DISPATCHER, AREA, 4)
        actor = Actor(user_id, "bench", Role.DISPATCHER, AREA)
        per_phase, warm = -(-args.scans // PER_PARENT), WARMUP_SCANS // PER_PARENT
        sizes = (warm, warm) + (per_phase, per_phase) * args.rounds  # raw, service, raw, ...
        chunks = [parent_codes(sum(sizes[:i]), n) for i, n in enumerate(sizes)]
        codes = [code for chunk in chunks for code in chunk]
        await add_parents(pool, codes, user_id)
        raw = raw_scan(pool, user_id)

        async def service(parent: str, child: str) -> None:
            result = await link_child(engine, actor, str(uuid.uuid4()), parent, child)
            if not result.ok:
                raise RuntimeError(f"link_child({parent}, {child}): {result.message}")

        phases: dict[str, list[Phase]] = {"raw asyncpg": [], "service": []}
        for i, chunk in enumerate(chunks):
            name, scan = ("raw asyncpg", raw) if i % 2 == 0 else ("service", service)
            items = work_items(chunk, f"{'RS'[i % 2]}{i // 2}")
            phase = await drive(name, scan, items, args.concurrency)
            if i >= 2:  # the first two are the warm-up
                phases[name].append(phase)
        await check(pool, len(codes))
        return combine("raw asyncpg", phases["raw asyncpg"]), combine("service", phases["service"])
    finally:
        await pool.close()
        await engine.dispose()


async def check(pool: asyncpg.Pool, parents: int) -> None:
    """Both paths did the whole job: every parent full and completed, counts match the links."""
    bad = await pool.fetchval(
        """SELECT count(*) FROM bag p WHERE kind = 'parent' AND (child_count <> 30
             OR status <> 'completed'
             OR (SELECT count(*) FROM link WHERE parent_id = p.id) <> 30)"""
    )
    if bad:
        raise RuntimeError(f"{bad} of {parents} parents are not full after the benchmark")


def report(raw: Phase, service: Phase, args: argparse.Namespace, pool: str, load: float) -> str:
    ratio = service.rate / raw.rate
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    rows = [
        "| path | scans/s | p50 ms | p99 ms | Python CPU µs/scan |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {p.name} | {p.rate:,.0f} | {p.percentile(50):.1f} | {p.percentile(99):.1f} "
            f"| {p.cpu_seconds / p.scans * 1e6:,.0f} |"
            for p in (raw, service)
        ),
    ]
    return "\n".join(
        [
            f"{args.scans} `link_child` scans per path x {args.rounds} round(s), "
            f"{args.concurrency} concurrent workers, a pool of {pool} connections per path; "
            f"{os.cpu_count()} CPUs shared by PostgreSQL and this "
            f"process, Python {platform.python_version()}, load average {load:.1f} before the "
            f"run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
            *rows,
            "",
            f"Service / raw: **{ratio:.2f}x** (target >= {TARGET}x): **{verdict}**",
        ]
    )


async def main_async(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]

    async def measure(database_url: str, _: Path) -> tuple[Phase, Phase, str]:
        print(f"scratch database: {args.scans} scans per path, {args.concurrency} workers")
        settings = Settings(database_url=database_url)
        pool = (
            f"{settings.db_pool_size + settings.db_max_overflow} ({settings.db_pool_size} "
            f"+ {settings.db_max_overflow} overflow, as the app)"
        )
        raw_url = libpq_url(database_url, make_url(database_url).database or "")
        return *await run(args, settings, raw_url), pool

    (raw, service, pool), postgres = await in_scratch("tt-scan-", measure)
    body = report(raw, service, args, pool, load)
    publish(body, args.write, HEADING, "python -m bench scan", "bench/scan_throughput.py", postgres)


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench scan", description=summary)
    parser.add_argument("--scans", type=int, default=6000, help="scans per path (default 6000)")
    parser.add_argument("--concurrency", type=int, default=64, help="workers (default 64)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate raw/service this many times (default 1)"
    )
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
