"""Redis clients for what answers people (sign-in limits, readiness, the metrics sample).

A Redis that is hung (stopped, not dead: connections stay open, nothing answers) must cost a
request one short timeout, never hang it; every caller has a fallback for an error.
"""

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

TIMEOUT_S = 0.5


def quick_redis(url: str) -> Redis:
    """A client whose every call fails within ``TIMEOUT_S`` (no retries) when Redis does not
    answer."""
    return Redis.from_url(
        url,
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
