"""``python -m bench <name> [options]``: run one benchmark."""

import sys
from collections.abc import Callable
from importlib import import_module

BENCHMARKS = {"scan": "bench.scan_throughput", "walls": "bench.ws_load"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    run: Callable[[list[str]], int] = import_module(BENCHMARKS[argv[0]]).main
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
