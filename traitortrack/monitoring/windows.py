"""Sliding one-minute windows with flat memory: latencies as log-scale histograms, and counts.

A window is 60 one-second slots; each slot is reset when its second comes round again. A
latency window's slots are bucket counts on a log scale (each bucket 20 % wider than the one
before), so percentiles cost a sum over ~80 integers and windows from several workers merge
by adding their buckets.
"""

import math
import time
from collections.abc import Callable, Iterable, Mapping

SLOTS = 60
GROWTH = 1.2
SMALLEST_MS = 0.05
BUCKETS = 90  # SMALLEST_MS * GROWTH**89 is about 600 s: everything fits


def bucket_of(ms: float) -> int:
    if ms <= SMALLEST_MS:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(ms / SMALLEST_MS, GROWTH)))


def bucket_ms(index: int) -> float:
    """A representative value of a bucket: the geometric middle of its bounds."""
    if index == 0:
        return SMALLEST_MS
    return SMALLEST_MS * GROWTH ** (index - 0.5)


def percentiles(buckets: Mapping[int, int], wanted: Iterable[float]) -> dict[str, float | None]:
    """``{"p50": ms, ...}`` from bucket counts (None when there is nothing to measure)."""
    total = sum(buckets.values())
    found: dict[str, float | None] = {}
    for q in wanted:
        name = f"p{q * 100:g}"
        if total == 0:
            found[name] = None
            continue
        rank, seen = q * total, 0
        for index in sorted(buckets):
            seen += buckets[index]
            if seen >= rank:
                found[name] = round(bucket_ms(index), 2)
                break
    return found


def merge(windows: Iterable[Mapping[int | str, int]]) -> dict[int, int]:
    """Add bucket counts (keys may be strings once they have been through JSON)."""
    merged: dict[int, int] = {}
    for buckets in windows:
        for index, count in buckets.items():
            merged[int(index)] = merged.get(int(index), 0) + count
    return merged


class _Slots:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.stamps = [-1] * SLOTS

    def slot(self) -> int:
        """The current second's slot, cleared if it still holds a minute-old second."""
        second = int(self.clock())
        index = second % SLOTS
        if self.stamps[index] != second:
            self.stamps[index] = second
            self.clear(index)
        return index

    def live(self) -> list[int]:
        """Slots of the last 60 seconds."""
        now = int(self.clock())
        return [i for i, stamp in enumerate(self.stamps) if now - SLOTS < stamp <= now]

    def clear(self, index: int) -> None:
        raise NotImplementedError


class LatencyWindow(_Slots):
    """Latencies of the last minute."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.slots: list[dict[int, int]] = [{} for _ in range(SLOTS)]

    def clear(self, index: int) -> None:
        self.slots[index] = {}

    def observe(self, ms: float) -> None:
        slot = self.slots[self.slot()]
        bucket = bucket_of(ms)
        slot[bucket] = slot.get(bucket, 0) + 1

    def buckets(self) -> dict[int, int]:
        return merge(self.slots[i] for i in self.live())

    def summary(self) -> dict[str, float | None]:
        return percentiles(self.buckets(), (0.5, 0.95, 0.99))


class CountWindow(_Slots):
    """How many times something happened in the last minute, and in the last full second."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.counts = [0] * SLOTS

    def clear(self, index: int) -> None:
        self.counts[index] = 0

    def add(self, n: int = 1) -> None:
        self.counts[self.slot()] += n

    def last_minute(self) -> int:
        return sum(self.counts[i] for i in self.live())

    def last_second(self) -> int:
        second = int(self.clock()) - 1
        index = second % SLOTS
        return self.counts[index] if self.stamps[index] == second else 0
