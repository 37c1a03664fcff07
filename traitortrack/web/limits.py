"""Rate limits on sign-in, 2FA and password endpoints, per IP and per account.

quart-rate-limiter keeps its counters in memory (per process) unless given a store; with
``REDIS_URL`` they live in Redis so the limits hold across workers and machines.
"""

import contextlib
import logging
from datetime import UTC, datetime, timedelta

from quart import Quart, g, request, session
from quart_rate_limiter import RateLimit, RateLimiter, rate_limit
from quart_rate_limiter.redis_store import RedisStore
from quart_rate_limiter.store import MemoryStore
from redis.exceptions import RedisError

from traitortrack.config import Settings

log = logging.getLogger(__name__)

PER_IP = RateLimit(20, timedelta(minutes=1))
PER_ACCOUNT = RateLimit(10, timedelta(minutes=1))


class PrefixedRedisStore(RedisStore):
    """The library's Redis store, with our key prefix and keys that expire on their own."""

    def __init__(self, address: str, prefix: str) -> None:
        super().__init__(address)
        self.prefix = f"{prefix}:ratelimit:"

    # Redis down must not lock everyone out: the limits lapse (the sign-in pauses, kept in
    # PostgreSQL, still guard every account) and come back with Redis.
    async def get(self, key: str, default: datetime) -> datetime:
        try:
            return await super().get(self.prefix + key, default)
        except (RedisError, OSError):
            log.warning("rate limits unavailable: Redis is unreachable")
            return default

    async def set(self, key: str, tat: datetime) -> None:
        ttl = max(1, int((tat - datetime.now(UTC)).total_seconds()) + 1)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.set(self.prefix + key, tat.timestamp(), ex=ttl)  # type: ignore[union-attr]

    async def after_serving(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


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
