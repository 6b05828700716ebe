"""The Redis stores a ``redis_url`` names: one server or a cluster, chosen in one place (the
URL is checked first: ``ConfigurationError`` for one that is malformed or unsupported)."""

from __future__ import annotations

import time

from tenant_gateway.clock import Clock
from tenant_gateway.quota import HydrateSource
from tenant_gateway.redis.cluster_counters import ClusterCounters
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.urls import check_redis_url

__all__ = ["open_counters"]


def open_counters(
    url: str,
    *,
    key_prefix: str = "tg:",
    hydrate_from: HydrateSource | None = None,
    clock: Clock = time.time,
) -> RedisCounters:
    """The usage counters on ``url``'s Redis; nothing connects until they are used."""
    kind = ClusterCounters if check_redis_url(url) is not None else RedisCounters
    return kind(url, key_prefix=key_prefix, hydrate_from=hydrate_from, clock=clock)
