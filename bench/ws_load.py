"""Wall displays under load: event-to-display latency with 1,000 walls and 500 scanner sockets
open at 500 scans/s, against a same-run baseline with only the measuring walls open (issue 8,
target 4).

    python -m bench walls [--walls 1000] [--scanners 500] [--rate 500] [--seconds 20]
                          [--workers 1] [--redis URL] [--write]

The app runs as ``traitortrack serve`` on a scratch database. Dispatchers scan over websockets
at a fixed rate (open loop: a slow server does not slow the senders). ``--measuring`` walls
parse every frame; the others read and discard, as a browser that keeps up would, so that this
process spends its CPU on the measurement. Event-to-display latency runs from the event's time
in the database (its transaction's start, on this machine's clock) to a measuring wall
receiving it. Server CPU and memory are read from /proc for the runner and its workers.

The pieces here (wall clients, scanners, one measured phase) also drive ``bench fanout`` and
``bench soak``; every client can be spread over several app processes.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import uvloop
import websockets

from bench.live import (
    AREAS,
    AckSocket,
    Scanner,
    Server,
    client_frame,
    login,
    machine_busy,
    scanner_name,
    start_server,
    upgrade_request,
)
from bench.scratch import in_scratch, publish

TARGET_P99_MS = 250.0
READ_EVERY_S = 0.5  # how often a reading wall takes what the kernel holds for it
HEADING = "## Wall displays under load, {workers} (issue 8, target 4)"
HELLO = json.dumps({"type": "hello", "last_event_id": None}).encode()


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

    @property
    def scans_per_s(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0

    @property
    def display_p99(self) -> float:
        return self.pct(self.display_ms, 99)


PHASE = Phase("", 0)


def record_ack(ms: float) -> None:
    PHASE.acked += 1
    PHASE.ack_ms.append(ms)


async def measuring_wall(server: Server, cookie: str, ready: asyncio.Event) -> None:
    """A wall that reads everything, timing each scan it is shown (from the event's time in
    the database, on this same machine's clock)."""
    url = server.base.replace("http", "ws") + "/ws?view=wall"
    async with websockets.connect(
        url, additional_headers={"Cookie": cookie}, max_size=None, open_timeout=60
    ) as ws:
        await ws.send(HELLO.decode())
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


class ReadingWall(asyncio.Protocol):
    """A wall that keeps up but does not parse: a protocol object that drops what it reads, with
    no task or buffer of its own, so that thousands of them cost this process little.

    Once open it reads every ``READ_EVERY_S``: the kernel holds the frames sent meanwhile (a few
    KB), and one read takes them all, where reading each frame as it comes made this process,
    which shares the machine with the servers, pay a wake-up per frame per wall. The server
    writes exactly as it would to a wall that reads at once.
    """

    def __init__(self, request: bytes, on_lost: Callable[[], None]) -> None:
        self.request, self.on_lost = request, on_lost
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.transport: asyncio.WriteTransport | None = None
        self.leaving = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        if self.opened.done():
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(READ_EVERY_S, self._read_again)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        if self.head.startswith(b"HTTP/1.1 101"):
            self.transport.write(client_frame(HELLO))
            self.opened.set_result(None)
        else:
            self.opened.set_exception(RuntimeError(self.head[:200]))

    def _read_again(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        elif not self.leaving:
            self.on_lost()  # the server closed it: it fell behind

    def close(self) -> None:
        self.leaving = True
        if self.transport is not None:
            self.transport.close()


async def open_reading_wall(
    server: Server, cookie: str, on_lost: Callable[[], None] = lambda: None
) -> ReadingWall:
    request = upgrade_request(server.port, cookie, "/ws?view=wall")
    _, wall = await asyncio.get_running_loop().create_connection(
        lambda: ReadingWall(request, on_lost), "127.0.0.1", server.port
    )
    await asyncio.wait_for(wall.opened, 60)
    return wall


def count_drop() -> None:
    PHASE.dropped += 1


@dataclass
class Load:
    """The clients of one run, spread evenly over the app processes in ``servers``."""

    servers: list[Server]
    wall_cookie: str
    scanners: list[Scanner] = field(default_factory=list)
    walls: list[ReadingWall] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    measuring: int = 0

    @classmethod
    async def start(cls, servers: list[Server], scanners: int) -> "Load":
        load = cls(servers, await login(servers[0].base, "wall"))
        cookies = [await login(servers[0].base, scanner_name(area)) for area in AREAS]
        for i in range(scanners):
            server = servers[i % len(servers)]
            ws = await AckSocket.open(server.port, cookies[i % len(AREAS)])
            load.scanners.append(Scanner(ws, i, AREAS[i % len(AREAS)], record_ack, scanners))
        for scanner in load.scanners:
            await scanner.open_parents()
        return load

    @property
    def open_walls(self) -> int:
        return self.measuring + len(self.walls)

    async def add_measuring_walls(self, count: int) -> None:
        for _ in range(count):
            ready = asyncio.Event()
            server = self.servers[self.measuring % len(self.servers)]
            self.tasks.append(asyncio.create_task(measuring_wall(server, self.wall_cookie, ready)))
            await asyncio.wait_for(ready.wait(), 60)
            self.measuring += 1

    async def add_reading_walls(self, count: int) -> None:
        for _ in range(count):
            server = self.servers[len(self.walls) % len(self.servers)]
            self.walls.append(await open_reading_wall(server, self.wall_cookie, count_drop))

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for wall in self.walls:
            wall.close()
        for scanner in self.scanners:
            with contextlib.suppress(Exception):
                scanner.ws.close()

    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)

    def rss_mb(self) -> float:
        return sum(s.rss_mb() for s in self.servers)


async def measure(name: str, load: Load, rate: float, seconds: float, warmup: float) -> Phase:
    """Scan at ``rate`` for ``warmup`` + ``seconds``; figures are of the last ``seconds``."""
    global PHASE
    PHASE = Phase(name, load.open_walls)
    scanners = load.scanners
    interval = len(scanners) / rate  # each scanner's share of the rate
    deadline = time.monotonic() + warmup + seconds
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
    await asyncio.sleep(warmup)
    # Everything before this point was warm-up: measure from here.
    PHASE.sent = PHASE.acked = PHASE.resyncs = PHASE.dropped = 0
    PHASE.ack_ms, PHASE.display_ms = [], []
    started, cpu, busy, bench_cpu = (
        time.monotonic(),
        load.cpu_seconds(),
        machine_busy(),
        time.process_time(),
    )
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        rss_peak = max(rss_peak, load.rss_mb())
    await asyncio.gather(*drivers)
    PHASE.seconds = time.monotonic() - started
    await asyncio.sleep(1)  # the last acks and frames arrive
    now_busy = machine_busy()
    PHASE.server_cpu_pct = 100 * (load.cpu_seconds() - cpu) / PHASE.seconds
    PHASE.machine_cpu_pct = 100 * (now_busy[0] - busy[0]) / max(1, now_busy[1] - busy[1])
    PHASE.bench_cpu_pct = 100 * (time.process_time() - bench_cpu) / PHASE.seconds
    PHASE.server_rss_mb = rss_peak
    return PHASE


def passed(phase: Phase, rate: float) -> bool:
    """The target: p99 within 250 ms, the asked rate kept, no wall dropped or resynced."""
    return (
        phase.display_p99 <= TARGET_P99_MS
        and phase.scans_per_s >= 0.95 * rate
        and phase.dropped == phase.resyncs == 0
    )


async def start_servers(
    database_url: str,
    directory: Path,
    workers: int,
    processes: int,
    redis: str | None,
    worker_cpu: float = 0.0,
) -> list[Server]:
    """``processes`` app processes of ``workers`` each on one database (and one Redis prefix);
    with ``worker_cpu``, each process capped at that share of a CPU per worker."""
    cores = worker_cpu * workers
    first = await start_server(database_url, directory, workers, redis, cores)
    servers = [first]
    try:
        for n in range(1, processes):
            log = directory / f"server-{n}.log"
            servers.append(Server(first.env, workers, log, cpu_cores=cores))
            await servers[-1].ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


async def run(args: argparse.Namespace, database_url: str, directory: Path) -> tuple[Phase, Phase]:
    servers = await start_servers(database_url, directory, args.workers, 1, args.redis)
    load = await Load.start(servers, args.scanners)
    try:
        await load.add_measuring_walls(args.measuring)
        await asyncio.sleep(1.5)
        baseline = await measure("baseline", load, args.rate, args.seconds, args.warmup)
        print(f"  baseline done: {baseline.acked} scans acked", flush=True)
        await load.add_reading_walls(args.walls - args.measuring)
        await asyncio.sleep(3)
        loaded = await measure("loaded", load, args.rate, args.seconds, args.warmup)
        print(f"  loaded done: {loaded.acked} scans acked", flush=True)
        return baseline, loaded
    finally:
        load.close()
        for server in servers:
            server.stop()


def report(phases: tuple[Phase, Phase], args: argparse.Namespace, load: float) -> str:
    rows = [
        "| phase | walls open | scans/s | ack p99 ms | event-to-display p50 / p95 / p99 ms "
        "| server CPU (% of a core) | server RSS MB | machine CPU busy | walls resynced/dropped |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        rows.append(
            f"| {p.name} | {p.walls:,} | {p.scans_per_s:,.0f} | {p.pct(p.ack_ms, 99):.1f} "
            f"| {p.pct(p.display_ms, 50):.0f} / {p.pct(p.display_ms, 95):.0f} / "
            f"{p.display_p99:.0f} | {p.server_cpu_pct:.0f} % | {p.server_rss_mb:.0f} "
            f"| {p.machine_cpu_pct:.0f} % | {p.resyncs}/{p.dropped} |"
        )
    baseline, loaded = phases
    ratio = loaded.display_p99 / baseline.display_p99
    verdict = "PASS" if passed(loaded, args.rate) else "FAIL"
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
            f"Event-to-display p99 with {loaded.walls:,} walls: **{loaded.display_p99:.0f} ms**, "
            f"{ratio:.2f}x the baseline's {baseline.display_p99:.0f} ms "
            f"(target <= {TARGET_P99_MS:.0f} ms at {args.rate} scans/s, no wall dropped): "
            f"**{verdict}**",
            f"(bench process CPU: {baseline.bench_cpu_pct:.0f} % / {loaded.bench_cpu_pct:.0f} % "
            "of a core.)",
        ]
    )


async def main_async(args: argparse.Namespace) -> bool:
    load = os.getloadavg()[0]
    print(f"scratch database; {args.walls} walls at {args.rate} scans/s", flush=True)
    phases, postgres = await in_scratch("tt-walls-", lambda url, path: run(args, url, path))
    workers = args.workers
    heading = HEADING.format(workers="one worker" if workers == 1 else f"{workers} workers")
    command = "python -m bench walls" + (f" --workers {workers} --redis URL" if workers > 1 else "")
    body = report(phases, args, load)
    publish(body, args.write, heading, command, "bench/ws_load.py", postgres)
    return passed(phases[1], args.rate)


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench walls", description=summary)
    parser.add_argument("--walls", type=int, default=1000, help="walls open (default 1000)")
    parser.add_argument("--measuring", type=int, default=20, help="walls that time (default 20)")
    parser.add_argument("--rate", type=int, default=500, help="scans per second (default 500)")
    parser.add_argument("--scanners", type=int, default=500, help="scanner sockets (default 500)")
    parser.add_argument("--seconds", type=float, default=20, help="measured per phase")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up per phase")
    parser.add_argument("--workers", type=int, default=1, help="server workers (default 1)")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"), help="REDIS_URL")
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    args = parser.parse_args(argv)
    if args.workers > 1 and not args.redis:
        parser.error("several workers need --redis")
    return 0 if uvloop.run(main_async(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
