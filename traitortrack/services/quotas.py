"""Abuse limits on scanning: how fast one account may scan, and how many sockets it may hold.

Sized far above a person (a fast scanner does 2-3 scans a second; a burst after an offline
spell replays its queue), far below a script: a compromised scanner cannot claim the whole code
space, nor hold a worker's memory with sockets. The limits are per worker: an account's socket
lives on one worker, and its HTTP scans are a fallback. A trip is logged, counted on
``/metrics`` and audited (once a minute per account, so a flood writes no flood of rows).
"""

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.monitoring import prometheus
from traitortrack.services.accounts import Origin, audit

log = logging.getLogger(__name__)

AUDIT_EVERY_S = 60.0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class Quotas:
    """The per-account token buckets of one worker (limits from ``Settings``)."""

    engine: AsyncEngine
    rate: float
    burst: int
    sockets: int
    _buckets: dict[int, _Bucket] = field(default_factory=dict)
    _audited_at: dict[tuple[int, str], float] = field(default_factory=dict)

    @property
    def too_fast(self) -> str:
        return (
            f"Too many scans: at most {self.rate:g} a second ({self.burst} in a burst). "
            "This one was not saved; send it again in a moment."
        )

    @property
    def too_many_sockets(self) -> str:
        return (
            f"This account already has {self.sockets} live connections open. Close the pages "
            "or devices you no longer use, then reload."
        )

    def take_scan(self, user_id: int) -> bool:
        """Spend one scan of the account's allowance; False when it has none left."""
        now = time.monotonic()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if len(self._buckets) > 10_000:  # accounts that went quiet: their buckets are full
            self._forget_full(now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        for user_id in [u for u, b in self._buckets.items() if now - b.at > full_after]:
            del self._buckets[user_id]

    async def tripped(self, limit: str, user_id: int, username: str, origin: Origin) -> None:
        """Record that ``limit`` refused the account: a log line and a metric every time, an
        audit row at most once a minute."""
        prometheus.LIMIT_TRIPS.labels(limit).inc()
        log.warning("abuse limit tripped", extra={"limit": limit, "user": username})
        now = time.monotonic()
        key = (user_id, limit)
        if now - self._audited_at.get(key, -AUDIT_EVERY_S) < AUDIT_EVERY_S:
            return
        self._audited_at[key] = now
        async with self.engine.begin() as conn:
            await audit(conn, origin, f"limit.{limit}", user_id, username)
