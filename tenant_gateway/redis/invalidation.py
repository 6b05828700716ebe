"""Invalidation across processes: a change is published on a Redis channel, and every gateway
process subscribed to it evicts the tenant from its key cache (``propagation.py``)."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from tenant_gateway.propagation import Invalidator, KeyCache
from tenant_gateway.redis.clients import redis_client

__all__ = ["RedisInvalidator"]

logger = logging.getLogger("tenant_gateway.propagation")


class RedisInvalidator(Invalidator):
    def __init__(self, resolver: KeyCache, url: str, *, channel: str, timeout: float = 1.0) -> None:
        super().__init__(resolver)
        # Subscribed on the primary (redis+sentinel://: wherever it is when resubscribing).
        self._redis = redis_client(
            url, timeout=timeout, socket_timeout=None, socket_connect_timeout=timeout
        )
        self._channel = channel
        self.ready = asyncio.Event()
        """Set while subscribed (tests wait on it)."""

    async def tenant_changed(self, tenant_id: str) -> None:
        await super().tenant_changed(tenant_id)
        try:
            await self._redis.publish(self._channel, tenant_id)
        except RedisError as exc:  # the other workers fall back on the cache TTL
            logger.warning("could not publish invalidation of %s: %s", tenant_id, exc)

    async def run(self) -> None:
        """Listen until cancelled, resubscribing after a lost connection."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                # changes published while we were not listening are unknown: start afresh
                self._resolver.forget_all()
                self.ready.set()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        self._resolver.forget_tenant(data.decode("utf-8", "replace"))
            except RedisError as exc:
                self.ready.clear()
                logger.warning("invalidation channel lost (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()
