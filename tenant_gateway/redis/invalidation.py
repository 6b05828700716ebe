"""Invalidation across processes: a change is published on a Redis channel, and every gateway
process subscribed to it evicts the tenant from its key cache (``propagation.py``).

The subscription is also checked, not assumed: every ``heartbeat`` seconds the subscriber sends
PING on its own connection. Redis answers it behind every message it relayed before, so the
PONG, which carries the time the PING left, tells the key cache that everything published
before that moment has been applied here (``KeyCache.confirm``). A lost connection raises, and a
silent one (no PONG for ``SILENCE`` seconds) is dropped; either way the confirmations stop, the
cache falls back to its short TTL, and the subscription starts afresh, cache emptied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tenant_gateway.clock import Clock, system_clock
from tenant_gateway.propagation import Invalidator, KeyCache
from tenant_gateway.redis.clients import redis_client

__all__ = ["SILENCE", "RedisInvalidator"]

logger = logging.getLogger("tenant_gateway.propagation")

SILENCE = 5.0
"""Seconds without an answer to a heartbeat after which the subscription is taken for dead."""


class RedisInvalidator(Invalidator):
    def __init__(
        self,
        resolver: KeyCache,
        url: str,
        *,
        channel: str,
        clock: Clock = system_clock,
        heartbeat: float = 0.25,
        timeout: float = 1.0,
    ) -> None:
        super().__init__(resolver)
        # Subscribed on the primary (redis+sentinel://: wherever it is when resubscribing).
        self._redis = redis_client(
            url, timeout=timeout, socket_timeout=None, socket_connect_timeout=timeout
        )
        # No retry for the subscriber: a read that fails must reach run(), which starts afresh,
        # never be retried on a new connection (what was published in between would be lost).
        self._subscriber = redis_client(
            url,
            timeout=timeout,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._channel = channel
        self._clock = clock
        self._heartbeat = min(max(heartbeat, 0.05), 1.0)
        self.ready = asyncio.Event()
        """Set while subscribed (tests wait on it)."""

    async def tenant_changed(self, tenant_id: str) -> None:
        await super().tenant_changed(tenant_id)
        try:
            await self._redis.publish(self._channel, tenant_id)
        except RedisError as exc:  # the other workers fall back on their cache's long TTL
            logger.warning("could not publish invalidation of %s: %s", tenant_id, exc)

    async def listening(self, timeout: float = 2.0) -> None:
        """Once subscribed, or after ``timeout`` seconds without (the cache keeps its short TTL
        meanwhile): what is cached before the subscription is dropped when it comes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout)

    async def run(self) -> None:
        """Listen until cancelled, resubscribing after a lost or silent connection."""
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                # changes published while we were not listening are unknown: start afresh
                self._resolver.forget_all()
                self.ready.set()
                await self._listen(pubsub)
            except RedisError as exc:
                self.ready.clear()
                logger.warning("invalidation channel lost (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()

    async def _listen(self, pubsub: PubSub) -> None:
        """Apply each eviction as it comes, and send a heartbeat every ``heartbeat`` seconds."""
        loop = asyncio.get_running_loop()
        due = heard = loop.time()
        while True:
            now = loop.time()
            if now >= due:
                if now - heard > SILENCE:
                    raise RedisConnectionError(f"no answer to a heartbeat for {SILENCE:g} s")
                await pubsub.ping(repr(self._clock()))
                due = now + self._heartbeat
            message = await pubsub.get_message(timeout=due - now)
            if message is None:
                continue
            data = message["data"]
            if message["type"] == "pong":
                heard = loop.time()
                self._resolver.confirm(float(data))
            elif isinstance(data, bytes):
                self._resolver.forget_tenant(data.decode("utf-8", "replace"))

    async def close(self) -> None:
        await self._subscriber.aclose()
        await self._redis.aclose()
