"""The clients of the one Redis a URL names (checked first, ``urls.py``): ``redis://``,
``rediss://`` and ``unix://`` name one server; ``redis+sentinel://`` and ``rediss+sentinel://``
the primary of a Sentinel service, wherever it is now (``sentinel.py``). A cluster has clients
of its own (``cluster_counters.py``, ``cluster_invalidation.py``).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from tenant_gateway.redis.pipeline import Greet, PipelinedRedis
from tenant_gateway.redis.sentinel import SCHEMES, SentinelURL, locate_for
from tenant_gateway.redis.sentinel import primary_client as sentinel_primary_client

__all__ = ["pipelined_redis", "redis_client"]


def _sentinel(url: str) -> SentinelURL | None:
    return SentinelURL.parse(url) if url.partition("://")[0].lower() in SCHEMES else None


def redis_client(
    url: str, *, timeout: float, blocking: bool = False, **options: Any
) -> aioredis.Redis:
    """A redis-py client; ``blocking``: a pool that waits for a free connection (up to
    ``timeout``) instead of failing. ``options`` are redis-py's keyword arguments."""
    sentinel = _sentinel(url)
    if sentinel is not None:
        return sentinel_primary_client(sentinel, timeout=timeout, blocking=blocking, **options)
    if blocking:
        pool = aioredis.BlockingConnectionPool.from_url(url, timeout=timeout, **options)
        return aioredis.Redis(connection_pool=pool)
    return aioredis.Redis.from_url(url, **options)


def pipelined_redis(
    url: str, client: aioredis.Redis, *, timeout: float, greet: Greet | None = None
) -> PipelinedRedis:
    """The hot path's pipelined connection to the server ``client`` talks to: for a Sentinel
    service, wherever its sentinels say the primary is at each connection."""
    sentinel = _sentinel(url)
    if sentinel is None:
        return PipelinedRedis(url, timeout=timeout, greet=greet)
    return PipelinedRedis(
        sentinel.node_url, timeout=timeout, locate=locate_for(client), greet=greet
    )
