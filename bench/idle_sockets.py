"""Memory per idle websocket: a worker's RSS as idle wall displays are opened (issue 8,
target 6).

    python -m bench idle [--sockets 2000] [--write]
    python -m bench idle --trace [--sockets 1000]

One ``traitortrack serve --workers 1`` on a scratch database, and as same-run baselines plain
Hypercorn serving a bare ASGI app and a bare Quart websocket route (what the stack costs before
any of ours). Walls are opened by a raw client (``ReadingWall``: one protocol object each, no
library) in two equal halves. The figure is the RSS growth over the second half divided by its
sockets, so one-off allocations (first imports, caches, the pool) made by the first sockets do
not count as per-socket cost; the growth from the empty server is reported beside it.

With ``--trace`` it says where that memory goes: only ``traitortrack serve``, with tracemalloc
on in its worker, which writes a snapshot after each half (``trace_hook/sitecustomize.py``);
the difference between the two, divided by the sockets, is what each idle socket keeps, by the
line that allocated it.
"""

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import uvloop
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart, websocket

from bench.live import Server, login
from bench.scratch import in_scratch, publish
from bench.ws_load import ReadingWall, open_reading_wall, start_servers

HEADING = "## Memory per idle websocket (issue 8, target 6)"
TARGET_KB = 20.0
SETTLE_S = 5.0


async def bare_asgi(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The floor: Hypercorn with an ASGI app that accepts websockets and holds them."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        while (await receive())["type"] != "websocket.disconnect":
            pass


bare_quart = Quart(__name__)
bare_quart.route("/ready")(lambda: "ok")


@bare_quart.websocket("/ws")
async def _hold() -> None:
    """Quart's share: a websocket route that accepts and reads, nothing else."""
    await websocket.accept()
    while True:
        await websocket.receive()


SERVERS = (
    ("Hypercorn, bare ASGI app (floor)", "bench.idle_sockets:bare_asgi"),
    ("Hypercorn + Quart, bare websocket route", "bench.idle_sockets:bare_quart"),
    ("TraitorTrack (`traitortrack serve`, 1 worker)", None),
)


async def idle_rss(server: Server, sockets: int, cookie: str) -> list[float]:
    """The server's RSS (MB): empty, with half the walls open, with all of them."""
    walls: list[ReadingWall] = []
    try:
        await asyncio.sleep(SETTLE_S)
        samples = [server.rss_mb()]
        for _ in range(2):
            for _ in range(sockets // 2):
                walls.append(await open_reading_wall(server, cookie))
            await asyncio.sleep(SETTLE_S)
            samples.append(server.rss_mb())
        return samples
    finally:
        for wall in walls:
            wall.close()


async def run(args: argparse.Namespace, database_url: str, directory: Path) -> list[list[float]]:
    results = []
    for name, asgi_app in SERVERS:
        if asgi_app is None:
            (server,) = await start_servers(database_url, directory, 1, 1, None)
        else:
            server = Server(dict(os.environ), 1, directory / "plain.log", asgi_app)
        try:
            await server.ready()
            cookie = await login(server.base, "wall") if asgi_app is None else "plain=1"
            results.append(await idle_rss(server, args.sockets, cookie))
            print(f"  {name}: {results[-1]}", flush=True)
        finally:
            server.stop()
    return results


def per_socket_kb(samples: list[float], sockets: int) -> float:
    return (samples[2] - samples[1]) * 1024 / (sockets // 2)


def report(results: list[list[float]], args: argparse.Namespace) -> tuple[str, bool]:
    rows = [
        "| server | RSS MB empty / half / all | KB per idle socket (second half) | from empty |",
        "| --- | ---: | ---: | ---: |",
    ]
    for (name, _), samples in zip(SERVERS, results, strict=True):
        rows.append(
            f"| {name} | {' / '.join(f'{mb:.1f}' for mb in samples)} "
            f"| {per_socket_kb(samples, args.sockets):.1f} "
            f"| {(samples[2] - samples[0]) * 1024 / args.sockets:.1f} |"
        )
    floor, ours = per_socket_kb(results[0], args.sockets), per_socket_kb(results[-1], args.sockets)
    verdict = ours <= TARGET_KB
    body = "\n".join(
        [
            f"{args.sockets:,} idle wall sockets (`/ws?view=wall`, hello sent, nothing scanned; "
            f"the client offers permessage-deflate as browsers do) opened in two halves; RSS of "
            f"the server's processes read {SETTLE_S:.0f} s after each half. The two plain "
            f"Hypercorn servers are this run's baselines. {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
            *rows,
            "",
            f"Per idle websocket: **{ours:.1f} KB**, {ours / floor:.2f}x the bare Hypercorn "
            f"floor of {floor:.1f} KB measured in this run (target <= {TARGET_KB:.0f} KB): "
            f"**{'PASS' if verdict else 'FAIL'}**",
        ]
    )
    return body, verdict


TRACE_FRAMES = 12
TRACE_LINES = 30


async def traced(args: argparse.Namespace, database_url: str, directory: Path) -> str:
    """``--trace``: what each idle socket keeps, by the line that allocated it."""
    hook = Path(__file__).parent / "trace_hook"
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    os.environ.update(
        PYTHONTRACEMALLOC=str(TRACE_FRAMES), TT_TRACE_DIR=str(directory), PYTHONPATH=path
    )
    (server,) = await start_servers(database_url, directory, 1, 1, None)
    walls: list[ReadingWall] = []
    try:
        cookie = await login(server.base, "wall")
        for half in (1, 2):
            for _ in range(args.sockets // 2):
                walls.append(await open_reading_wall(server, cookie))
            await asyncio.sleep(SETTLE_S)
            (worker,) = server.workers()
            os.kill(worker.pid, signal.SIGUSR1)
            snapshot = directory / f"snapshot-{worker.pid}-{half}"
            deadline = time.monotonic() + 120
            while not snapshot.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.5)  # another process writes it
            if not snapshot.exists():
                raise RuntimeError(f"the worker wrote no snapshot in 120 s; see {server.log}")
            print(f"  half {half}: {len(walls)} walls open, snapshot taken", flush=True)
    finally:
        for wall in walls:
            wall.close()
        server.stop()
    first, second = (tracemalloc.Snapshot.load(str(directory / f"snapshot-{worker.pid}-{n}"))
                     for n in (1, 2))  # fmt: skip
    return trace_report(second, first, args.sockets // 2)


def trace_report(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot, sockets: int) -> str:
    by_file = after.compare_to(before, "filename")
    by_line = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in by_line) / sockets

    def rows(stats: list[tracemalloc.StatisticDiff]) -> list[str]:
        return [
            f"| {_short(str(stat.traceback))} | {stat.size_diff / sockets:,.0f} "
            f"| {stat.count_diff / sockets:.1f} |"
            for stat in stats[:TRACE_LINES]
        ]

    return "\n".join([
        f"Traced per idle socket (the second {sockets:,} walls): **{total:,.0f} bytes**.", "",
        "| file | bytes per socket | blocks |", "| --- | ---: | ---: |", *rows(by_file), "",
        "| line | bytes per socket | blocks |", "| --- | ---: | ---: |", *rows(by_line),
    ])  # fmt: skip


def _short(where: str) -> str:
    """A source path as the project, a package or the standard library names it."""
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    for marker in (
        "site-packages" + os.sep,
        os.sep + f"python{sys.version_info[0]}.{sys.version_info[1]}" + os.sep,
    ):
        if marker in where:
            return where.split(marker, 1)[1]
    return where.replace(root, "")


async def main_async(args: argparse.Namespace) -> bool:
    if args.trace:
        table, _ = await in_scratch("tt-trace-", lambda url, path: traced(args, url, path))
        print(table)
        return True
    results, postgres = await in_scratch("tt-idle-", lambda url, path: run(args, url, path))
    body, verdict = report(results, args)
    publish(body, args.write, HEADING, "python -m bench idle", "bench/idle_sockets.py", postgres)
    return verdict


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench idle", description=summary)
    parser.add_argument("--sockets", type=int, default=2000, help="idle walls (default 2000)")
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    parser.add_argument(
        "--trace", action="store_true", help="where the memory goes, by allocating line"
    )
    return 0 if uvloop.run(main_async(parser.parse_args(argv))) else 1


if __name__ == "__main__":
    sys.exit(main())
