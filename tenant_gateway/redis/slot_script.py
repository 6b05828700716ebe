"""A Lua script run on the primary that serves its keys' slot (``SlotScript``), through the
nodes' pipelined connections (``cluster.py``): redirections followed, the script loaded on a
node that does not know it, and, for a script that stamps or checks usage hashes, the lineage of
the node it runs on given as one of its arguments."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from redis import exceptions as errors
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from tenant_gateway.redis.cluster import ClusterNodes, Command
from tenant_gateway.redis.pipeline import bulk, pack_command
from tenant_gateway.redis.slots import slot_of

__all__ = ["SlotScript"]


class SlotScript(AsyncScript):
    """A Lua script run on the primary of its keys' slot through ``ClusterNodes`` (pipelined,
    redirections followed, loaded where a node does not know it), called as redis-py's.
    ``lineage_at``: the index of the argument that is, whatever the caller gives, the lineage
    of the node the call is written on."""

    def __init__(
        self,
        cluster: RedisCluster,
        nodes: ClusterNodes,
        script: str,
        *,
        lineage_at: int | None = None,
    ) -> None:
        super().__init__(cluster, script)
        self._nodes = nodes
        self._source = script
        self._lineage_at = lineage_at

    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        reply = await self.send(keys, args or ())
        if isinstance(reply, errors.ResponseError):
            raise reply
        return reply

    def send(self, keys: Any, args: Any) -> asyncio.Future[Any]:
        """The call written now; its future gets the reply (an error reply is returned)."""
        names = [str(key) for key in keys]
        words = ["EVALSHA", self.sha, len(names), *names, *args]
        command: Command = pack_command(words)
        if self._lineage_at is not None:
            at = 3 + len(names) + self._lineage_at
            head = b"*%d\r\n%s" % (len(words), b"".join(map(bulk, words[:at])))
            command = functools.partial(_packed, head, b"".join(map(bulk, words[at + 1 :])))
        return self._nodes.send(slot_of(names[0]), command, self._source)


def _packed(head: bytes, tail: bytes, lineage: bytes) -> bytes:
    return b"".join((head, lineage, tail))
