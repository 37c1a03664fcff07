"""Sliding one-minute windows with flat memory: latencies as log-scale histograms, and counts;
and the health page's hour of history, in arrays allocated once.

A window is 60 one-second slots; each slot is reset when its second comes round again. A
latency window's slots are bucket counts on a log scale (each bucket 20 % wider than the one
before), so percentiles cost a sum over ~80 integers and windows from several workers merge
by adding their buckets.
"""

import math
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence

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


class History:
    """The last ``points`` samples of named series, oldest first, in arrays of floats allocated
    up front: the memory it takes is the same from the first sample to the millionth (a deque of
    tuples grew by about 2 MB over its first hour, which a soak saw as a leak)."""

    def __init__(self, names: Sequence[str], points: int) -> None:
        self.names = tuple(names)
        self._times = array("d", bytes(8 * points))
        self._columns = [array("d", bytes(8 * points)) for _ in self.names]
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, t: float, values: Sequence[float | None]) -> None:
        """One sample; None (nothing measured) is kept as NaN and given back as None."""
        index = self._next
        self._times[index] = t
        for column, value in zip(self._columns, values, strict=True):
            column[index] = math.nan if value is None else value
        self._next = (index + 1) % len(self._times)
        self._count = min(self._count + 1, len(self._times))

    def columns(self) -> dict[str, list[float] | dict[str, list[float | None]]]:
        """``{"t": [...], "series": {name: [...]}}``, oldest first."""
        return {
            "t": self._ordered(self._times),
            "series": {
                name: [None if math.isnan(v) else v for v in self._ordered(column)]
                for name, column in zip(self.names, self._columns, strict=True)
            },
        }

    def _ordered(self, column: "array[float]") -> list[float]:
        if self._count < len(column):
            return column[: self._count].tolist()
        return (column[self._next :] + column[: self._next]).tolist()
