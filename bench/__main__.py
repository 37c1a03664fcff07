"""``python -m bench <name> [options]``: run one benchmark; ``python -m bench all``: run every
one in turn with its defaults, writing docs/performance.md."""

import sys
from collections.abc import Callable
from importlib import import_module

BENCHMARKS = {
    "scan": "bench.scan_throughput",
    "walls": "bench.ws_load",
    "scanners": "bench.scanners",
    "fanout": "bench.fanout",
    "idle": "bench.idle_sockets",
    "soak": "bench.soak",
    "size": "bench.size",
    "drills": "bench.drills",
}


def run(name: str, argv: list[str]) -> int:
    benchmark: Callable[[list[str]], int] = import_module(BENCHMARKS[name]).main
    return benchmark(argv)


def main(argv: list[str]) -> int:
    if argv == ["all"]:
        return max(run(name, ["--write"]) for name in BENCHMARKS)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{all,{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
