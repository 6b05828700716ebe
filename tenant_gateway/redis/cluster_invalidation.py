"""Invalidation across processes on a Redis Cluster, by sharded pub/sub (``SPUBLISH`` /
``SSUBSCRIBE``, Redis 7): the channel lives on the primary that serves its slot, and publishers
and subscribers meet there.

Why sharded, not plain ``PUBLISH`` (which a cluster relays to every node over its bus, so a
subscriber on any node hears it): with sharded pub/sub a change reaches the subscribers from the
very node it was published on, in the order that node took it, so whatever a subscriber hears
from that node after a change was published includes the change; a plain message published on
one node reaches the others later, over the bus, with nothing to tell a subscriber elsewhere that
it has heard everything so far. And a change costs one node, not a broadcast to all of them.
The price: while the channel's primary is down and not replaced (a replica promoted), changes
reach the other processes only through the key cache's TTL, as with one Redis down.

A subscriber follows the channel wherever its slot goes: Redis unsubscribes it when the slot
migrates, a failover closes its connection, and either way it subscribes again on the slot's
primary of the moment (the slot map asked again), its key cache emptied, since changes
published in between are unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tenant_gateway.propagation import Invalidator, KeyCache
from tenant_gateway.redis.cluster import ClusterNodes
from tenant_gateway.redis.slots import slot_of
from tenant_gateway.redis.urls import cluster_url

__all__ = ["ClusterInvalidator"]

logger = logging.getLogger("tenant_gateway.propagation")


class ClusterInvalidator(Invalidator):
    def __init__(self, resolver: KeyCache, url: str, *, channel: str, timeout: float = 1.0) -> None:
        super().__init__(resolver)
        self._url = cluster_url(url)
        self._timeout = timeout
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._url.seeds],
            require_full_coverage=False,
            socket_connect_timeout=timeout,
            **self._url.client_options(),
        )
        self._nodes = ClusterNodes(self._url, timeout=timeout, clock=time.time)
        self._channel = channel
        self._slot = slot_of(channel)
        self.ready = asyncio.Event()
        """Set while subscribed (tests wait on it)."""

    async def tenant_changed(self, tenant_id: str) -> None:
        await super().tenant_changed(tenant_id)
        try:
            await self._cluster.spublish(self._channel, tenant_id)
        except RedisError as exc:  # the other workers fall back on the cache TTL
            logger.warning("could not publish invalidation of %s: %s", tenant_id, exc)

    async def run(self) -> None:
        """Listen until cancelled, subscribing again (where the channel is now) after a lost
        connection or a move of its slot."""
        while True:
            try:
                await self._listen()
            except RedisError as exc:
                self.ready.clear()
                logger.warning("invalidation channel lost (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        await self._nodes.refresh()
        node = self._nodes.owner(self._slot)
        if node is None:
            raise RedisConnectionError(f"no node serves the slot of {self._channel!r}")
        # No retry: a lost connection must end this subscription (redis-py would reconnect
        # and subscribe again in place, and what was published in between would go unnoticed).
        subscriber = aioredis.Redis.from_url(
            self._url.node_url(*node),
            socket_timeout=None,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = subscriber.pubsub()
        try:
            await pubsub.ssubscribe(self._channel)  # a node that lost the slot answers MOVED
            async for message in pubsub.listen():
                kind, data = message["type"], message["data"]
                if kind == "ssubscribe":
                    # changes published while we were not listening are unknown: start afresh
                    self._resolver.forget_all()
                    self.ready.set()
                elif kind == "sunsubscribe":
                    raise RedisConnectionError("the channel's slot moved to another node")
                elif isinstance(data, bytes):
                    self._resolver.forget_tenant(data.decode("utf-8", "replace"))
        finally:
            await pubsub.aclose()
            await subscriber.aclose()

    async def close(self) -> None:
        await self._nodes.close()
        await self._cluster.aclose()
