"""The Redis a URL names, for every part of the gateway that talks to it.

``redis://``, ``rediss://`` and ``unix://`` name one server (redis-py's URL, options and
all); ``redis+sentinel://`` and ``rediss+sentinel://`` the primary of a Sentinel service,
wherever it is now (``sentinel.py``). A URL is checked once, when the settings are made: one
that cannot be used is a ``ConfigurationError`` that names what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url

from tenant_gateway.exceptions import ConfigurationError, redact_url
from tenant_gateway.redis.pipeline import Greet, PipelinedRedis
from tenant_gateway.redis.sentinel import SCHEMES, SentinelURL, limits_storage, locate_for
from tenant_gateway.redis.sentinel import primary_client as sentinel_primary_client

__all__ = ["check_redis_url", "limits_storage_for", "pipelined_redis", "redis_client"]

_PLAIN_SCHEMES = ("redis", "rediss", "unix")


def _sentinel(url: str) -> SentinelURL | None:
    return SentinelURL.parse(url) if url.partition("://")[0] in SCHEMES else None


def check_redis_url(url: str) -> None:
    """Raise ``ConfigurationError`` for a URL no client here can use."""
    if _sentinel(url) is not None:
        return
    scheme = url.partition("://")[0]
    if scheme not in _PLAIN_SCHEMES:
        known = ", ".join(f"{name}://" for name in (*_PLAIN_SCHEMES, *SCHEMES))
        raise ConfigurationError(
            f"redis_url {redact_url(url)!r}: unsupported scheme {scheme!r} (known: {known})"
        )
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"redis_url {redact_url(url)!r}: {exc}") from exc


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


def limits_storage_for(url: str, timeout: float) -> tuple[str, Mapping[str, Any]]:
    """The ``limits`` storage URL (``async+`` left out) and its options, for limits shared on
    Redis."""
    sentinel = _sentinel(url)
    if sentinel is not None:
        return limits_storage(sentinel, timeout)
    return url, {}
