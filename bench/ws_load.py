"""Wall displays under load: event-to-display latency with 1,000 walls open at 500 scans/s,
against a same-run baseline with only the measuring walls open (issue 7).

    python -m bench.ws_load [--walls 1000] [--rate 500] [--seconds 20] [--workers 1]
    python -m bench walls ...

The app runs as ``traitortrack serve`` on a scratch database. Dispatchers scan over websockets
at a fixed rate (open loop: a slow server does not slow the senders). ``--measuring`` walls
parse every frame; the others read and discard, as a browser that keeps up would, so that this
process spends its CPU on the measurement. Event-to-display latency runs from the event's time
in the database (its transaction's start, on this machine's clock) to a measuring wall
receiving it. Server CPU and memory are read from /proc for the runner and its workers.
"""

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import websockets

from bench.docs import DOC, write_section
from bench.live import (
    AREAS,
    Scanner,
    Server,
    login,
    machine_busy,
    open_socket,
    scanner_name,
    scratch_database,
    start_server,
)

TARGET_P99_MS = 250.0
HEADING = "## Wall displays under load (issue 7)"


@dataclass
class Phase:
    name: str
    walls: int
    seconds: float = 0.0
    sent: int = 0
    acked: int = 0
    ack_ms: list[float] = field(default_factory=list)
    display_ms: list[float] = field(default_factory=list)
    server_cpu_pct: float = 0.0
    server_rss_mb: float = 0.0
    machine_cpu_pct: float = 0.0
    bench_cpu_pct: float = 0.0
    resyncs: int = 0
    dropped: int = 0

    def pct(self, values: list[float], p: int) -> float:
        if len(values) < 2:
            return float("nan")
        return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


PHASE = Phase("", 0)


def record_ack(ms: float) -> None:
    PHASE.acked += 1
    PHASE.ack_ms.append(ms)


async def measuring_wall(base: str, cookie: str, ready: asyncio.Event) -> None:
    """A wall that reads everything, timing each scan it is shown (from the event's time in
    the database, on this same machine's clock)."""
    url = base.replace("http", "ws") + "/ws?view=wall"
    async with websockets.connect(
        url, additional_headers={"Cookie": cookie}, max_size=None, open_timeout=60
    ) as ws:
        await ws.send(json.dumps({"type": "hello", "last_event_id": None}))
        ready.set()
        async for raw in ws:
            now = time.time()
            message = json.loads(raw)
            if message["type"] == "resync":
                PHASE.resyncs += 1
            if message["type"] != "events":
                continue
            for event in message["events"]:
                if event["kind"] == "child.linked":
                    at = datetime.fromisoformat(event["at"]).timestamp()
                    PHASE.display_ms.append((now - at) * 1000)


async def reading_wall(port: int, cookie: str, ready: asyncio.Event) -> None:
    """A wall that keeps up but does not parse (the handshake by hand, then read and drop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws?view=wall HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Cookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:200])
    hello = json.dumps({"type": "hello", "last_event_id": None}).encode()
    mask = os.urandom(4)
    writer.write(
        bytes([0x81, 0x80 | len(hello)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(hello))
    )
    ready.set()
    try:
        while await reader.read(1 << 16):
            pass
        PHASE.dropped += 1  # the server closed it: it fell behind
    finally:
        writer.close()


# Phases ------------------------------------------------------------------------------------


async def measure(name: str, walls: int, scanners: list[Scanner], server: Server,
                  args: argparse.Namespace) -> Phase:  # fmt: skip
    global PHASE
    PHASE = Phase(name, walls)
    interval = len(scanners) / args.rate  # each scanner's share of the rate
    deadline = time.monotonic() + args.warmup + args.seconds
    started: float | None = None
    cpu = busy = bench_cpu = 0.0
    rss_peak = 0.0

    async def drive(scanner: Scanner, offset: float) -> None:
        due = time.monotonic() + offset
        while due < deadline:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await scanner.scan_next()
            PHASE.sent += 1
            due += interval

    drivers = [asyncio.create_task(drive(s, i * interval / len(scanners)))
               for i, s in enumerate(scanners)]  # fmt: skip
    await asyncio.sleep(args.warmup)
    # Everything before this point was warm-up: measure from here.
    PHASE.sent = PHASE.acked = 0
    PHASE.ack_ms, PHASE.display_ms = [], []
    started, cpu, busy, bench_cpu = (
        time.monotonic(),
        server.cpu_seconds(),
        machine_busy(),
        time.process_time(),
    )
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        rss_peak = max(rss_peak, server.rss_mb())
    await asyncio.gather(*drivers)
    PHASE.seconds = time.monotonic() - started
    await asyncio.sleep(1)  # the last acks and frames arrive
    now_busy = machine_busy()
    PHASE.server_cpu_pct = 100 * (server.cpu_seconds() - cpu) / PHASE.seconds
    PHASE.machine_cpu_pct = 100 * (now_busy[0] - busy[0]) / max(1, now_busy[1] - busy[1])
    PHASE.bench_cpu_pct = 100 * (time.process_time() - bench_cpu) / PHASE.seconds
    PHASE.server_rss_mb = rss_peak
    return PHASE


async def run(args: argparse.Namespace, database_url: str, directory: Path) -> tuple[Phase, Phase]:
    server = await start_server(database_url, directory, args.workers, args.redis)
    tasks: list[asyncio.Task[None]] = []
    sockets = []
    try:
        wall_cookie = await login(server.base, "wall")
        scanners = []
        cookies = [await login(server.base, scanner_name(area)) for area in AREAS]
        for i in range(args.scanners):
            ws = await open_socket(server, cookies[i % len(AREAS)])
            sockets.append(ws)
            scanners.append(Scanner(ws, i, AREAS[i % len(AREAS)], record_ack, args.scanners))
        for scanner in scanners:
            await scanner.open_parents()

        async def open_walls(count: int, kind: str) -> None:
            for _ in range(count):
                ready = asyncio.Event()
                if kind == "measuring":
                    tasks.append(
                        asyncio.create_task(measuring_wall(server.base, wall_cookie, ready))
                    )
                else:
                    tasks.append(asyncio.create_task(reading_wall(server.port, wall_cookie, ready)))
                await asyncio.wait_for(ready.wait(), 60)

        await open_walls(args.measuring, "measuring")
        await asyncio.sleep(1.5)
        baseline = await measure("baseline", args.measuring, scanners, server, args)
        print(f"  baseline done: {baseline.acked} scans acked", flush=True)
        await open_walls(args.walls - args.measuring, "reading")
        await asyncio.sleep(3)
        loaded = await measure("loaded", args.walls, scanners, server, args)
        print(f"  loaded done: {loaded.acked} scans acked", flush=True)
        return baseline, loaded
    finally:
        for task in tasks:
            task.cancel()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        server.stop()


def report(phases: tuple[Phase, Phase], args: argparse.Namespace, load: float) -> str:
    rows = [
        "| phase | walls open | scans/s | ack p99 ms | event-to-display p50 / p95 / p99 ms "
        "| server CPU (% of a core) | server RSS MB | machine CPU busy | walls resynced/dropped |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        rows.append(
            f"| {p.name} | {p.walls:,} | {p.acked / p.seconds:,.0f} | {p.pct(p.ack_ms, 99):.1f} "
            f"| {p.pct(p.display_ms, 50):.0f} / {p.pct(p.display_ms, 95):.0f} / "
            f"{p.pct(p.display_ms, 99):.0f} | {p.server_cpu_pct:.0f} % | {p.server_rss_mb:.0f} "
            f"| {p.machine_cpu_pct:.0f} % | {p.resyncs}/{p.dropped} |"
        )
    loaded = phases[1]
    p99 = loaded.pct(loaded.display_ms, 99)
    verdict = (
        "PASS"
        if p99 <= TARGET_P99_MS and loaded.acked / loaded.seconds >= 0.95 * args.rate
        else "FAIL"
    )
    return "\n".join(
        [
            f"{args.rate} scans/s asked for from {args.scanners} scanner sockets, {args.seconds} s "
            f"measured after {args.warmup} s of warm-up per phase; {args.measuring} walls time "
            f"every scan, the rest read and discard; {args.workers} worker(s)"
            f"{' with Redis' if args.redis else ', in-process bus'}. {os.cpu_count()} CPUs shared "
            f"by PostgreSQL, the server and this benchmark; Python {platform.python_version()}, "
            f"load average {load:.1f} before the run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
            *rows,
            "",
            f"Event-to-display p99 with {loaded.walls:,} walls: **{p99:.0f} ms** "
            f"(target <= {TARGET_P99_MS:.0f} ms at {args.rate} scans/s): **{verdict}**",
            f"(bench process CPU: {phases[0].bench_cpu_pct:.0f} % / {loaded.bench_cpu_pct:.0f} % "
            "of a core.)",
        ]
    )


def write_doc(body: str, postgres: str) -> None:
    write_section(HEADING, "python -m bench walls", "bench/ws_load.py", body, postgres)


async def main_async(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    async with scratch_database() as (database_url, postgres):
        with tempfile.TemporaryDirectory(prefix="tt-walls-") as directory:
            print(f"scratch database; {args.walls} walls at {args.rate} scans/s", flush=True)
            phases = await run(args, database_url, Path(directory))
    body = report(phases, args, load)
    print(body)
    if args.write:
        write_doc(body, postgres)
        print(f"written to {DOC}")


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench walls", description=summary)
    parser.add_argument("--walls", type=int, default=1000, help="walls open (default 1000)")
    parser.add_argument("--measuring", type=int, default=20, help="walls that time (default 20)")
    parser.add_argument("--rate", type=int, default=500, help="scans per second (default 500)")
    parser.add_argument("--scanners", type=int, default=20, help="scanner sockets (default 20)")
    parser.add_argument("--seconds", type=float, default=20, help="measured per phase")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up per phase")
    parser.add_argument("--workers", type=int, default=1, help="server workers (default 1)")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"), help="REDIS_URL")
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    args = parser.parse_args(argv)
    if args.workers > 1 and not args.redis:
        parser.error("several workers need --redis")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
