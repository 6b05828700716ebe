"""What a Redis server is, as the counters need to know: a plain ``redis://`` URL must reach a
server that holds every key itself, not one node of a cluster (which answers ``MOVED`` for the
slots of the others)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["WrongServer", "check_server"]


class WrongServer(RedisError):
    """The server answers, but cannot hold the counters as the URL names it."""


async def check_server(client: aioredis.Redis, where: str) -> None:
    """Raise ``WrongServer`` when ``client``'s server is a cluster node (``where``: its
    ``host:port``, for the URL to use instead)."""
    info = await client.info("cluster")
    if str(info.get("cluster_enabled", 0)) == "1":
        raise WrongServer(f"it is a Redis Cluster node: name the cluster, redis+cluster://{where}")
