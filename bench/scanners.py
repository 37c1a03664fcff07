"""Scanner sockets at warehouse scale: scans/s end to end against raw asyncpg, and ack latency
from 100 scans/s to saturation with 1,000 scanner sockets open (issue 8, targets 1 and 2).

    python -m bench scanners [--sockets 1000] [--clients 2] [--profile NAME] [--write]

The app runs as ``traitortrack serve`` on a scratch database. In the same run:

- RAW: the ``RAW_SCAN`` writes of bench/scan_throughput.py on an asyncpg pool of the app's size,
  one transaction per scan, from this process (the floor of what a scan costs the database).
- END TO END: every scanner socket sends its next scan when the last one is acked, as a client's
  outbox does (closed loop), so the server is kept saturated: socket, validation, transaction,
  ack, fan-out of the event to every scanner socket of its area.
- LATENCY CURVE: the same sockets, open loop (a slow server does not slow the senders), at
  rising rates until the acked rate falls under 95 % of the offered one or p99 passes 1 s.

The sockets live in ``--clients`` processes that skim the frames and decode only acks, so the
load generator stays off the critical path; its CPU, the server's and the machine's are
reported. ``--profile NAME`` records the server with py-spy at ``--profile-rate`` into
docs/profiles/NAME.txt (collapsed stacks: speedscope.app opens them) and NAME-top.txt.
"""

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bench.live import (
    AREAS,
    PARENTS_PER_SCANNER,
    ROOT,
    AckSocket,
    Scanner,
    Server,
    login,
    machine_busy,
    scanner_name,
    start_server,
)
from bench.scan_throughput import (
    PER_PARENT,
    Phase,
    add_parents,
    drive,
    parent_codes,
    raw_scan,
    work_items,
)
from bench.scratch import in_scratch, libpq_url, publish
from traitortrack.config import Settings

TARGET_RATIO = 1.0
TARGET_P99_MS = 50.0
TARGET_RATE = 500
SATURATED_SHARE = 0.95
SATURATED_P99_MS = 1000.0
DRAIN_S = 10.0
HEADING = "## Scanner sockets at warehouse scale (issue 8)"
PLOT = ROOT / "docs" / "scan-latency.png"
PROFILES = ROOT / "docs" / "profiles"


@dataclass(frozen=True)
class Step:
    """What every client process is asked to do, together, from ``start`` (``time.time()``)."""

    start: float
    warmup: float
    seconds: float
    rate: float | None  # this process's share of an open-loop rate; None: closed loop


@dataclass
class Tally:
    """What a client process saw in a step's measured window."""

    sent: int = 0
    acked: int = 0
    ack_ms: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    unacked: int = 0  # still waiting after the step and DRAIN_S more
    dropped: int = 0  # sockets the server has closed so far (a client too slow is dropped)


@dataclass
class Result:
    """One measured step, every client process added up."""

    name: str
    seconds: float
    offered: float | None
    tally: Tally
    server_cpu_pct: float
    machine_cpu_pct: float

    @property
    def rate(self) -> float:
        return self.tally.acked / self.seconds

    @property
    def bench_cpu_pct(self) -> float:
        return 100 * self.tally.cpu_seconds / self.seconds

    def pct(self, p: int) -> float:
        if len(self.tally.ack_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.tally.ack_ms, n=100, method="inclusive")[p - 1]

    @property
    def saturated(self) -> bool:
        offered = self.offered or 0.0
        return self.rate < SATURATED_SHARE * offered or self.pct(99) > SATURATED_P99_MS


# Client processes ---------------------------------------------------------------------------


class Client:
    """This process's share of the scanner sockets."""

    def __init__(self) -> None:
        self.scanners: list[Scanner] = []
        self.acked: list[asyncio.Event] = []
        self.window = (0.0, 0.0)
        self.tally = Tally()

    async def open(self, port: int, cookies: list[str], indices: list[int], total: int) -> None:
        """Open the sockets of ``indices`` not open yet, and scan their first parents."""
        for index in indices[len(self.scanners) :]:
            ws = await AckSocket.open(port, cookies[index % len(AREAS)])
            done = asyncio.Event()
            scanner = Scanner(ws, index, AREAS[index % len(AREAS)], self._on_ack(done), total)
            self.scanners.append(scanner)
            self.acked.append(done)
        for scanner in self.scanners:
            await scanner.open_parents()
        await self.settle(60)

    def _on_ack(self, done: asyncio.Event) -> Callable[[float], None]:
        scanner_index = len(self.scanners)

        def on_ack(ms: float) -> None:
            if self.window[0] <= time.monotonic() < self.window[1]:
                self.tally.acked += 1
                self.tally.ack_ms.append(ms)
            if not self.scanners[scanner_index].sent_at:
                done.set()

        return on_ack

    async def settle(self, seconds: float) -> int:
        """Wait (up to ``seconds``) for every scan sent to be acked; how many were not."""
        deadline = time.monotonic() + seconds
        # Acks arrive on a thousand sockets: a count polled 20 times a second costs less than
        # an event set on every one of them.
        while (waiting := sum(len(s.sent_at) for s in self.scanners)) and (  # noqa: ASYNC110
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        return waiting

    async def run(self, step: Step) -> Tally:
        await asyncio.sleep(max(0.0, step.start - time.time()))
        began = time.monotonic()
        self.window = (began + step.warmup, began + step.warmup + step.seconds)
        self.tally = Tally()
        measuring = asyncio.create_task(self._measure_cpu())
        live = [i for i, s in enumerate(self.scanners) if not s.ws.closed]
        if step.rate is None:
            # A scan that is never acked must not hold the step: its socket just stops.
            loops = [asyncio.create_task(self._closed_loop(i)) for i in live]
            _, stuck = await asyncio.wait(loops, timeout=self.window[1] - began + DRAIN_S)
            for task in stuck:
                task.cancel()
        else:
            await self._open_loop(step.rate, [self.scanners[i] for i in live])
        await measuring
        self.tally.unacked = await self.settle(DRAIN_S)
        self.tally.dropped = sum(s.ws.closed for s in self.scanners)
        return self.tally

    async def _measure_cpu(self) -> None:
        start, end = self.window
        await asyncio.sleep(start - time.monotonic())
        cpu = time.process_time()
        await asyncio.sleep(end - time.monotonic())
        self.tally.cpu_seconds = time.process_time() - cpu

    async def _closed_loop(self, index: int) -> None:
        scanner, done = self.scanners[index], self.acked[index]
        while time.monotonic() < self.window[1]:
            done.clear()
            await scanner.scan_next()
            self._count_sent()
            await done.wait()

    async def _open_loop(self, rate: float, scanners: list[Scanner]) -> None:
        """Scans at ``rate`` in turn over the sockets: late ticks catch up, never skip."""
        interval, due, turn = 1 / rate, time.monotonic(), 0
        while due < self.window[1]:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            while due <= time.monotonic() and due < self.window[1]:
                await scanners[turn].scan_next()
                self._count_sent()
                turn = (turn + 1) % len(scanners)
                due += interval

    def _count_sent(self) -> None:
        if self.window[0] <= time.monotonic() < self.window[1]:
            self.tally.sent += 1


def client_process(
    port: int, cookies: list[str], indices: range, total: int, pipe: Connection
) -> None:
    """A client process, until it is sent None: given a number, it opens its share of that many
    sockets and answers how many it has; given a step, it runs it and answers its tally."""
    import uvloop

    async def main() -> None:
        client = Client()
        loop = asyncio.get_running_loop()
        while (order := await loop.run_in_executor(None, pipe.recv)) is not None:
            if isinstance(order, Step):
                pipe.send(await client.run(order))
            else:
                await client.open(port, cookies, [i for i in indices if i < order], total)
                pipe.send(len(client.scanners))

    uvloop.run(main())


class Clients:
    """The client processes, driven in lockstep."""

    def __init__(self, port: int, cookies: list[str], sockets: int, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for p in range(processes):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=client_process,
                args=(port, cookies, range(p, sockets, processes), sockets, theirs),
                daemon=True,
            )
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    async def open(self, sockets: int) -> int:
        """Have ``sockets`` open in all (spread over the processes); returns how many are."""
        for pipe in self.pipes:
            pipe.send(sockets)
        loop = asyncio.get_running_loop()
        return sum([await loop.run_in_executor(None, pipe.recv) for pipe in self.pipes])

    async def step(self, name: str, server: Server, args: argparse.Namespace,
                   rate: float | None = None) -> Result:  # fmt: skip
        share = None if rate is None else rate / len(self.pipes)
        step = Step(time.time() + 0.5, args.warmup, args.seconds, share)
        for pipe in self.pipes:
            pipe.send(step)
        await asyncio.sleep(step.start + step.warmup - time.time())
        cpu, busy = server.cpu_seconds(), machine_busy()
        await asyncio.sleep(step.seconds)
        server_cpu, now_busy = server.cpu_seconds() - cpu, machine_busy()
        loop = asyncio.get_running_loop()
        tallies = [await loop.run_in_executor(None, pipe.recv) for pipe in self.pipes]
        total = Tally(
            sum(t.sent for t in tallies),
            sum(t.acked for t in tallies),
            [ms for t in tallies for ms in t.ack_ms],
            sum(t.cpu_seconds for t in tallies),
            sum(t.unacked for t in tallies),
            sum(t.dropped for t in tallies),
        )
        machine = 100 * (now_busy[0] - busy[0]) / max(1, now_busy[1] - busy[1])
        result = Result(name, step.seconds, rate, total, 100 * server_cpu / step.seconds, machine)
        print(
            f"  {name}: {result.rate:,.0f} scans/s acked, p50/p99 {result.pct(50):.1f}/"
            f"{result.pct(99):.1f} ms, server CPU {result.server_cpu_pct:.0f} %, bench CPU "
            f"{result.bench_cpu_pct:.0f} %, {total.unacked} unacked, {total.dropped} dropped",
            flush=True,
        )
        return result

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(15)
            if process.is_alive():
                process.kill()


# The run ------------------------------------------------------------------------------------


@dataclass
class Run:
    raw: Phase
    raw_machine_cpu_pct: float
    closed: Result
    closed_sockets: int
    curve: list[Result]
    profiled: Result | None
    sockets: int


async def raw_baseline(database_url: str, args: argparse.Namespace) -> tuple[Phase, float]:
    """RAW_SCAN on fresh parents (M444- codes: the scanners own the SB ones), warmed up."""
    settings = Settings(database_url=database_url)
    size = settings.db_pool_size + settings.db_max_overflow
    dsn = libpq_url(database_url, make_url(database_url).database or "")
    pool = await asyncpg.create_pool(
        dsn, min_size=size, max_size=size, server_settings={"jit": "off"}
    )
    try:
        user_id = await pool.fetchval(
            'SELECT id FROM "user" WHERE username = $1', scanner_name("jaipur")
        )
        warm, measured = 600 // PER_PARENT, -(-args.raw_scans // PER_PARENT)
        codes = parent_codes(1, warm + measured, prefix="M444-")
        await add_parents(pool, codes, user_id)
        scan = raw_scan(pool, user_id)
        await drive("warm-up", scan, work_items(codes[:warm], "RW"), args.concurrency)
        busy = machine_busy()
        phase = await drive("raw asyncpg", scan, work_items(codes[warm:], "R"), args.concurrency)
        now_busy = machine_busy()
        return phase, 100 * (now_busy[0] - busy[0]) / max(1, now_busy[1] - busy[1])
    finally:
        await pool.close()


async def run(args: argparse.Namespace, database_url: str, directory: Path) -> Run:
    server = await start_server(database_url, directory, args.workers, args.redis)
    clients = None
    try:
        raw, raw_machine = await raw_baseline(database_url, args)
        print(f"  raw asyncpg: {raw.rate:,.0f} scans/s", flush=True)
        cookies = [await login(server.base, scanner_name(area)) for area in AREAS]
        clients = Clients(server.port, cookies, args.sockets, args.clients)
        closed_sockets = await clients.open(args.closed_sockets)
        print(f"  {closed_sockets} scanner sockets open, their parents scanned", flush=True)
        closed = await clients.step("end to end (closed loop)", server, args)
        sockets = await clients.open(args.sockets)
        print(f"  {sockets} scanner sockets open", flush=True)
        curve: list[Result] = []
        for rate in args.rates:
            curve.append(await clients.step(f"{rate:,} scans/s", server, args, rate))
            if curve[-1].saturated:
                break
        profiled = None
        if args.profile:
            profiled = await profile(args.profile, clients, server, args)
        return Run(raw, raw_machine, closed, closed_sockets, curve, profiled, sockets)
    finally:
        if clients is not None:
            clients.stop()
        server.stop()


# Profiles -----------------------------------------------------------------------------------


async def profile(name: str, clients: Clients, server: Server, args: argparse.Namespace) -> Result:
    """py-spy on the server (runner and workers) through a step at ``--profile-rate``."""
    PROFILES.mkdir(parents=True, exist_ok=True)
    stacks = PROFILES / f"{name}.txt"
    seconds = args.warmup + args.seconds
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
        str(server.process.pid), "--subprocesses", "--nonblocking", "--format", "raw",
        "--duration", str(int(seconds)), "--output", str(stacks),
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    result = await clients.step(f"profiled at {args.profile_rate:,} scans/s", server, args,
                                args.profile_rate)  # fmt: skip
    await spy.wait()
    summary = summarize(stacks.read_text(), name, result)
    (PROFILES / f"{name}-top.txt").write_text(summary)
    print(summary)
    return result


def summarize(collapsed: str, name: str, result: Result, top: int = 30) -> str:
    """The hottest functions of py-spy's collapsed stacks: own time and time inside."""
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        total += samples
        if frames:
            own[frames[-1]] += samples
        for frame in set(frames):
            inside[frame] += samples

    def table(counter: Counter[str]) -> list[str]:
        return [f"{100 * n / total:6.1f} %  {frame}" for frame, n in counter.most_common(top)]

    return "\n".join(
        [
            f"py-spy profile '{name}' of the server (all processes, idle time left out): "
            f"{total} samples at 100 Hz, {result.name}, {result.rate:,.0f} scans/s acked, "
            f"server CPU {result.server_cpu_pct:.0f} % of a core.",
            "",
            "Own time (the function itself was running):",
            *table(own),
            "",
            "Inclusive time (the function was on the stack):",
            *table(inside),
            "",
        ]
    )


# The report ---------------------------------------------------------------------------------


def report(run: Run, args: argparse.Namespace, load: float) -> str:
    ratio = run.closed.rate / run.raw.rate
    at_target = next((r for r in run.curve if r.offered == TARGET_RATE), None)
    last = run.curve[-1].offered or 0.0
    p99 = f"{at_target.pct(99):.1f} ms" if at_target else f"saturated at {last:,.0f} scans/s"
    p99_ok = (
        at_target is not None and not at_target.saturated and at_target.pct(99) <= TARGET_P99_MS
    )
    sockets = f"{run.sockets:,} sockets"
    lines = [
        f"{run.closed_sockets:,} scanner sockets for the closed loop, then {run.sockets:,} "
        f"for the curve ({len(AREAS)} dispatchers, one per area; each "
        f"socket rotates over {PARENTS_PER_SCANNER} parents of its own) in {args.clients} "
        f"client processes; "
        f"{args.workers} server worker(s){' with Redis' if args.redis else ', in-process bus'}; "
        f"each step {args.seconds:g} s measured after {args.warmup:g} s of warm-up. Raw: "
        f"{args.raw_scans:,} scans after 600 of warm-up, {args.concurrency} concurrent on an "
        f"asyncpg pool of 30 (as the app). {os.cpu_count()} CPUs shared by PostgreSQL, the "
        f"server and the bench; Python {platform.python_version()}, load average {load:.1f} "
        f"before the run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code at {code_version()}.",
        "",
        "| figure | measured | baseline (same run) | ratio | target | result |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| scan throughput, scans/s (end to end, {run.closed_sockets:,} sockets) "
        f"| {run.closed.rate:,.0f} "
        f"| {run.raw.rate:,.0f} (raw asyncpg) | {ratio:.2f}x | >= {TARGET_RATIO:.1f}x raw "
        f"| **{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}** |",
        f"| ack p99 at {TARGET_RATE} scans/s, {sockets} | {p99} "
        f"| {run.raw.percentile(99):.1f} ms (raw, saturated) | - | <= {TARGET_P99_MS:.0f} ms "
        f"| **{'PASS' if p99_ok else 'FAIL'}** |",
        "",
        "Throughput, both paths saturated:",
        "",
        "| path | scans/s | p50 ms | p99 ms | server CPU | bench CPU | machine busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| raw asyncpg, one transaction per scan | {run.raw.rate:,.0f} "
        f"| {run.raw.percentile(50):.1f} | {run.raw.percentile(99):.1f} | - "
        f"| {100 * run.raw.cpu_seconds / run.raw.seconds:.0f} % "
        f"| {run.raw_machine_cpu_pct:.0f} % |",
        f"| end to end over {run.closed_sockets:,} sockets, closed loop | {run.closed.rate:,.0f} "
        f"| {run.closed.pct(50):.1f} | {run.closed.pct(99):.1f} "
        f"| {run.closed.server_cpu_pct:.0f} % | {run.closed.bench_cpu_pct:.0f} % "
        f"| {run.closed.machine_cpu_pct:.0f} % |",
        "",
        f"Ack latency against offered load, open loop over {sockets} (plot: "
        f"[scan-latency.png](scan-latency.png)):",
        "",
        "| offered scans/s | acked scans/s | ack p50 ms | p95 ms | p99 ms | server CPU "
        "| bench CPU | machine busy | unacked at end | sockets dropped |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r.offered:,.0f} | {r.rate:,.0f} | {r.pct(50):.1f} | {r.pct(95):.1f} "
            f"| {r.pct(99):.1f} | {r.server_cpu_pct:.0f} % | {r.bench_cpu_pct:.0f} % "
            f"| {r.machine_cpu_pct:.0f} % | {r.tally.unacked:,} | {r.tally.dropped:,} |"
            for r in [*run.curve, *([run.profiled] if run.profiled else [])]
        ),
        "",
        "CPU is per cent of one core (server: the runner and its workers; bench: the client "
        "processes, or for raw this process driving asyncpg); machine busy is of all "
        f"{os.cpu_count()} CPUs. Saturation: acked < {SATURATED_SHARE:.0%} of offered or p99 "
        f"> {SATURATED_P99_MS:.0f} ms. Scans include the parent scans that start a new parent "
        "(1 in 31).",
    ]
    if run.profiled:
        lines.append(
            f"The last row is the `--profile {args.profile}` step (py-spy attached): "
            f"docs/profiles/{args.profile}.txt, docs/profiles/{args.profile}-top.txt."
        )
    return "\n".join(lines)


def code_version() -> str:
    """The commit the server ran (from this checkout), marked when files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "traitortrack")
    return git("rev-parse", "--short", "HEAD").strip() + (" with local changes" if dirty else "")


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    offered = [r.offered for r in run.curve]
    figure, axes = pyplot.subplots(figsize=(8, 5))
    axes.plot(offered, [r.pct(50) for r in run.curve], "o-", label="ack p50")
    axes.plot(offered, [r.pct(99) for r in run.curve], "s-", label="ack p99")
    axes.axhline(
        TARGET_P99_MS, color="red", linestyle="--", label=f"target p99 {TARGET_P99_MS:g} ms"
    )
    axes.axvline(TARGET_RATE, color="grey", linestyle=":", label=f"{TARGET_RATE} scans/s")
    axes.set_yscale("log")
    axes.set_xlabel("offered load, scans/s (open loop)")
    axes.set_ylabel("ack latency, ms")
    axes.set_title(
        f"Scan ack latency, {run.sockets:,} scanner sockets ({datetime.now(UTC):%Y-%m-%d})"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


async def main_async(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    print(f"scratch database; {args.sockets} scanner sockets", flush=True)
    result, postgres = await in_scratch("tt-scanners-", lambda url, path: run(args, url, path))
    if args.write:
        plot(result, PLOT)
        print(f"plot: {PLOT}")
    body = report(result, args, load)
    publish(body, args.write, HEADING, "python -m bench scanners", "bench/scanners.py", postgres)


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench scanners", description=summary)
    parser.add_argument("--sockets", type=int, default=1000, help="scanner sockets (1000)")
    parser.add_argument(
        "--closed-sockets", type=int, default=200, help="sockets in the closed loop (200)"
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--rates", type=lambda s: [int(r) for r in s.split(",")],
        default=[100, 250, 500, 750, 1000, 1500, 2000, 3000, 4000],
        help="open-loop steps, scans/s, until saturation (100,250,500,750,1000,1500,2000,...)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10, help="measured per step (10)")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up per step (3)")
    parser.add_argument("--raw-scans", type=int, default=6000, help="raw asyncpg scans (6000)")
    parser.add_argument("--concurrency", type=int, default=64, help="raw asyncpg workers (64)")
    parser.add_argument("--workers", type=int, default=1, help="server workers (1)")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"), help="REDIS_URL")
    parser.add_argument("--profile", metavar="NAME", help="py-spy the server: docs/profiles/NAME")
    parser.add_argument("--profile-rate", type=int, default=TARGET_RATE, help="scans/s (500)")
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    args = parser.parse_args(argv)
    if args.workers > 1 and not args.redis:
        parser.error("several workers need --redis")
    if args.write and importlib.util.find_spec("matplotlib") is None:
        parser.error("--write draws a plot with matplotlib: pip install -e '.[bench]' first")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
