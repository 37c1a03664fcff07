"""Rate limits on sign-in, 2FA and password endpoints, per IP and per account.

quart-rate-limiter keeps its counters in memory (per process) unless given a store; with
``REDIS_URL`` they live in Redis so the limits hold across workers and machines (and fall back
to per-worker limits while Redis does not answer).
"""

import logging
import time
from datetime import UTC, datetime, timedelta

from quart import Quart, g, request, session
from quart_rate_limiter import RateLimit, RateLimiter, rate_limit
from quart_rate_limiter.store import MemoryStore, RateLimiterStoreABC
from redis.asyncio import Redis
from redis.exceptions import RedisError

from traitortrack.config import Settings
from traitortrack.redis_clients import quick_redis

log = logging.getLogger(__name__)

PER_IP = RateLimit(20, timedelta(minutes=1))
PER_ACCOUNT = RateLimit(10, timedelta(minutes=1))
RETRY_REDIS_S = 5.0


class PrefixedRedisStore(RateLimiterStoreABC):
    """Limits kept in Redis, shared by every worker, under our key prefix and with keys that
    expire on their own.

    Redis down or hung must neither lock everyone out nor slow sign-in: after one failed call
    (at most ``redis_clients.TIMEOUT_S``) the limits fall back to this worker's memory, per
    worker but still limits, and Redis is tried again every ``RETRY_REDIS_S``.
    """

    def __init__(self, address: str, prefix: str) -> None:
        self.address = address
        self.prefix = f"{prefix}:ratelimit:"
        self.local = MemoryStore()
        self._redis: Redis | None = None
        self._retry_at: float | None = None  # set while the limits are per worker

    async def before_serving(self) -> None:
        self._redis = quick_redis(self.address)

    async def after_serving(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def get(self, key: str, default: datetime) -> datetime:
        if self._shared():
            try:
                raw = await self._redis.get(self.prefix + key)  # type: ignore[union-attr]
            except (RedisError, OSError) as error:
                self._fall_back(error)
            else:
                self._back()
                return default if raw is None else datetime.fromtimestamp(float(raw), UTC)
        return await self.local.get(key, default)

    async def set(self, key: str, tat: datetime) -> None:
        if self._shared():
            ttl = max(1, int((tat - datetime.now(UTC)).total_seconds()) + 1)
            try:
                await self._redis.set(self.prefix + key, tat.timestamp(), ex=ttl)  # type: ignore[union-attr]
                return
            except (RedisError, OSError) as error:
                self._fall_back(error)
        await self.local.set(key, tat)

    def _shared(self) -> bool:
        return self._retry_at is None or time.monotonic() >= self._retry_at

    def _fall_back(self, error: Exception) -> None:
        if self._retry_at is None:
            log.warning(
                "Redis is not answering: sign-in rate limits are now per worker, not shared",
                extra={"error": repr(error)},
            )
        self._retry_at = time.monotonic() + RETRY_REDIS_S

    def _back(self) -> None:
        if self._retry_at is not None:
            self._retry_at = None
            self.local = MemoryStore()
            log.warning("Redis answers again: sign-in rate limits are shared again")


async def ip_key() -> str:
    return f"ip:{request.remote_addr}"


async def account_key() -> str:
    """The account a request is about: the signed-in user, the pending 2FA user, or the
    username being tried."""
    who = g.get("account")
    if who is not None:
        return f"user:{who.id}"
    if (pending := session.get("pending_2fa")) is not None:
        return f"user:{pending['uid']}"
    form = await request.form
    return f"name:{str(form.get('username', '')).strip().lower()[:64]}"


async def only_writes() -> bool:
    """Skip the limit for GETs: showing a form costs nothing."""
    return request.method == "GET"


# Put under the route decorator of every sign-in, 2FA and password view.
protected = rate_limit(
    limits=[
        RateLimit(PER_IP.count, PER_IP.period, ip_key, only_writes),
        RateLimit(PER_ACCOUNT.count, PER_ACCOUNT.period, account_key, only_writes),
    ]
)


def install(app: Quart, settings: Settings) -> None:
    store = (
        PrefixedRedisStore(settings.redis_url, settings.redis_prefix)
        if settings.redis_url
        else MemoryStore()
    )
    RateLimiter(app, store=store)
