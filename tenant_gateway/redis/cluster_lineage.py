"""The lineage of each node of a Redis Cluster (``identity.py``): what the counters stamp a usage
hash with on that node, and what each script call written there carries (``cluster.py``).

A node's lineage is its own connection's answer to ``INFO``: asked at every connect (a node that
restarted has a new run id), and asked again before the next command written to it when it is in
doubt (``doubt``): the slot map gave it slots it did not serve (a replica promoted, a slot moved,
a primary demoted and promoted again under a live connection), or it refused a write as
``READONLY``. ``recheck`` asks in the background, for a node whose data set changed while this
process sent it nothing. A hash stamped with another lineage than its node's is checked against
the ledger, and raised to it, before it is used (``lua/hydrate.lua``): so a node that came back
with less is caught up, node by node, without touching the other nodes' tenants.
"""

from __future__ import annotations

import asyncio
import logging

from tenant_gateway.redis.identity import UNKNOWN_LINEAGE, Ask, identify
from tenant_gateway.redis.pipeline import bulk
from tenant_gateway.redis.slots import Node, node_name

__all__ = ["NodeLineages"]

logger = logging.getLogger("tenant_gateway.quota")

_PACKED_UNKNOWN = bulk(UNKNOWN_LINEAGE)


class NodeLineages:
    """Each node's lineage, and which nodes must be asked again before they are written to."""

    def __init__(self) -> None:
        self._lineages: dict[Node, int] = {}
        self._packed: dict[Node, bytes] = {}
        self._doubts: dict[Node, int] = {}  # node → the doubt's number (absent: no doubt)
        self._doubted = 0
        self._asking: dict[Node, asyncio.Task[None]] = {}

    def lineage(self, node: Node) -> int:
        return self._lineages.get(node, UNKNOWN_LINEAGE)

    def packed(self, node: Node) -> bytes:
        """The node's lineage as a RESP bulk string, as script calls carry it."""
        return self._packed.get(node, _PACKED_UNKNOWN)

    def doubtful(self, node: Node) -> bool:
        """Must the node be asked again before the next command is written to it?"""
        return node in self._doubts

    def doubt(self, node: Node) -> None:
        self._doubted += 1
        self._doubts[node] = self._doubted

    async def learn(self, node: Node, ask: Ask) -> None:
        """Ask the node (``ask``: a command on its connection) which data set it holds: the
        ``greet`` of each new connection (``pipeline.py``)."""
        since = self._doubted
        identity = await identify(ask)
        lineage = UNKNOWN_LINEAGE if identity is None else identity.lineage
        before = self._lineages.get(node)
        if lineage != before:
            self._lineages[node], self._packed[node] = lineage, bulk(lineage)
            if before is not None:
                logger.warning(
                    "Redis cluster node %s holds another data set (%s, was %s): its usage"
                    " hashes are checked against the ledger",
                    node_name(node),
                    lineage,
                    before,
                )
        if self._doubts.get(node, 0) <= since:  # no doubt arose while the node was asked
            self._doubts.pop(node, None)

    async def ask(self, node: Node, ask: Ask) -> None:
        """``learn`` on a connection already open; concurrent callers share one asking."""
        task = self._asking.get(node)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self.learn(node, ask))
            task.add_done_callback(_retrieved)  # its failure is its awaiters'
            self._asking[node] = task
        await asyncio.shield(task)

    async def close(self) -> None:
        for task in self._asking.values():
            task.cancel()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
        self._asking.clear()


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
