"""Soak: server memory and wall latency over a long run at 500 scans/s with 1,000 walls and
500 scanner sockets (issue 8, target 6).

    python -m bench soak [--minutes 30] [--sample 30] [--write]

The load of ``bench walls`` (same clients, same server), kept up for ``--minutes`` and measured
in windows of ``--sample`` seconds: each window gives the server's RSS and the walls'
event-to-display p99. The first window is the baseline. RSS is flat when its least-squares
slope over the windows after the first fifth of the run stays within ``TARGET_SLOPE_MB``
per 10 minutes (the first minutes fill caches and the pool, and are reported, not judged).
"""

import argparse
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from bench.scratch import in_scratch, publish
from bench.ws_load import Load, Phase, measure, start_servers

HEADING = "## Soak: memory over time (issue 8, target 6)"
TARGET_SLOPE_MB = 1.0  # per 10 minutes


async def run(args: argparse.Namespace, database_url: str, directory: Path) -> list[Phase]:
    servers = await start_servers(database_url, directory, 1, 1, None)
    load = await Load.start(servers, args.scanners)
    windows: list[Phase] = []
    try:
        await load.add_measuring_walls(args.measuring)
        await load.add_reading_walls(args.walls - args.measuring)
        for n in range(round(args.minutes * 60 / args.sample)):
            window = await measure(f"{n}", load, args.rate, args.sample - 1, 0)
            windows.append(window)
            print(
                f"  {(n + 1) * args.sample / 60:.1f} min: RSS {window.server_rss_mb:.1f} MB, "
                f"p99 {window.display_p99:.0f} ms, {window.scans_per_s:.0f} scans/s",
                flush=True,
            )
        return windows
    finally:
        load.close()
        for server in servers:
            server.stop()


def slope_mb_per_10_min(windows: list[Phase], sample_s: float) -> float:
    judged = windows[len(windows) // 5 :]
    if len(judged) < 2:
        return float("nan")
    minutes = [(len(windows) - len(judged) + i) * sample_s / 60 for i in range(len(judged))]
    return statistics.linear_regression(minutes, [w.server_rss_mb for w in judged]).slope * 10


def report(windows: list[Phase], args: argparse.Namespace, load: float) -> tuple[str, bool]:
    first, last = windows[0], windows[-1]
    slope = slope_mb_per_10_min(windows, args.sample)
    verdict = abs(slope) <= TARGET_SLOPE_MB
    p99s = [w.display_p99 for w in windows]
    dropped = sum(w.dropped + w.resyncs for w in windows)
    body = "\n".join(
        [
            f"{args.minutes:g} minutes at {args.rate} scans/s from {args.scanners} scanner "
            f"sockets with {args.walls:,} walls open ({args.measuring} timing), one worker, "
            f"in-process bus; RSS of the server's processes, sampled every {args.sample:g} s. "
            f"{os.cpu_count()} CPUs shared by PostgreSQL, the server and this benchmark; Python "
            f"{platform.python_version()}, load average {load:.1f} before the run, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
            "| | RSS MB | event-to-display p99 ms | scans/s |",
            "| --- | ---: | ---: | ---: |",
            f"| first window (baseline) | {first.server_rss_mb:.1f} | {first.display_p99:.0f} "
            f"| {first.scans_per_s:,.0f} |",
            f"| last window | {last.server_rss_mb:.1f} | {last.display_p99:.0f} "
            f"| {last.scans_per_s:,.0f} |",
            f"| worst window | {max(w.server_rss_mb for w in windows):.1f} | {max(p99s):.0f} "
            f"| {min(w.scans_per_s for w in windows):,.0f} |",
            "",
            f"RSS end / start: {last.server_rss_mb / first.server_rss_mb:.3f}x; slope after the "
            f"first fifth of the run: **{slope:+.2f} MB per 10 minutes** (target within "
            f"+-{TARGET_SLOPE_MB:g}): **{'PASS' if verdict else 'FAIL'}**. Walls dropped or "
            f"resynced over the run: {dropped}.",
        ]
    )
    return body, verdict


async def main_async(args: argparse.Namespace) -> bool:
    load = os.getloadavg()[0]
    windows, postgres = await in_scratch("tt-soak-", lambda url, path: run(args, url, path))
    body, verdict = report(windows, args, load)
    publish(body, args.write, HEADING, "python -m bench soak", "bench/soak.py", postgres)
    return verdict


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=summary)
    parser.add_argument("--minutes", type=float, default=30, help="length (default 30)")
    parser.add_argument("--sample", type=float, default=30, help="seconds per RSS sample")
    parser.add_argument("--walls", type=int, default=1000, help="walls open (default 1000)")
    parser.add_argument("--measuring", type=int, default=20, help="walls that time (default 20)")
    parser.add_argument("--scanners", type=int, default=500, help="scanner sockets (default 500)")
    parser.add_argument("--rate", type=int, default=500, help="scans per second (default 500)")
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    return 0 if uvloop.run(main_async(parser.parse_args(argv))) else 1


if __name__ == "__main__":
    sys.exit(main())
