"""The usage counters on a Redis Cluster (``ClusterCounters``): what ``RedisCounters`` does, with
no script call crossing a hash slot and no node's trouble reaching another node's tenants.

A tenant's hashes share one slot (``{<tenant>}`` in their names), so:

- **Decisions.** A turn's decisions are grouped by slot: one ``admit.lua`` call per slot, each
  written on the pipelined connection of the slot's primary (``cluster.py``, which follows
  ``MOVED``, ``ASK``, ``TRYAGAIN`` and ``NOSCRIPT``).
- **The flush.** Tallies owed are grouped by slot too: one ``add.lua`` call per slot, each with an
  exactly-once marker of this writer in that slot (named with the hash tag of the batch's first
  tenant, so the marker moves with the hashes it covers when the slot migrates). A slot whose
  reply was lost is sent again under its number while the other slots go on.
- **Reads, restores, deletions** go through redis-py's ``RedisCluster``; a snapshot reads each
  primary's keys apart, so a node that does not answer leaves out its own keys only (they stay
  owed to the ledger).
- **Breakers.** One per primary (``ClusterNodes``): a decision whose slot's primary has its
  circuit open fails at once; a node that fails opens its own circuit only.
- **Lineages.** Each primary has its own (``cluster_lineage.py``), and every script call that
  stamps or checks hashes carries the lineage of the node it runs on: a decision, a restore, the
  flush's check (``lua/unchecked.lua``) and a read (``lua/read.lua``). So a node that comes back
  with less (restarted from an older dump, a replica promoted before it had every write) has
  each of its hashes checked against the ledger, and raised to it, before the next decision on
  it, the next tally added to it or the next read of it; the other nodes' hashes are not.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from tenant_gateway.clock import Clock
from tenant_gateway.exceptions import StoreUnavailable, redact_url
from tenant_gateway.models import UsageKey
from tenant_gateway.quota import Admission, HydrateSource
from tenant_gateway.redis.cluster import ClusterNodes
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.decisions import ADMIT_SCRIPT, Decision, DecisionBatch
from tenant_gateway.redis.identity import UNKNOWN_LINEAGE
from tenant_gateway.redis.lua import load
from tenant_gateway.redis.replies import unreachable
from tenant_gateway.redis.slot_script import SlotScript
from tenant_gateway.redis.slots import Node, node_name, slot_of
from tenant_gateway.redis.urls import cluster_url
from tenant_gateway.tallies import HYDRATED, MAX_TALLY, sound_tallies

__all__ = ["ClusterCounters"]

logger = logging.getLogger("tenant_gateway.quota")

_SLOT_CACHE_SIZE = 100_000
_ITS_NODE = 0  # a lineage argument the call is given as the lineage of the node it runs on


class ClusterCounters(RedisCounters):
    """Counters shared by every worker and host using one Redis Cluster."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "tg:",
        timeout: float = 1.0,
        max_connections: int = 64,
        hydrate_from: HydrateSource | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._cluster_url = cluster_url(url)
        super().__init__(
            url,
            key_prefix=key_prefix,
            timeout=timeout,
            max_connections=max_connections,
            hydrate_from=hydrate_from,
            clock=clock,
        )
        self.nodes = ClusterNodes(self._cluster_url, timeout=timeout, clock=clock)
        # restores, flushes and reads on the nodes' pipelined connections too: no pool to run
        # out of; the restore's and the reads' lineage argument is the node's they run on
        self._hydrate_script = SlotScript(self._cluster, self.nodes, load("hydrate"), lineage_at=2)
        self._add_script = SlotScript(self._cluster, self.nodes, load("add"))
        self._unchecked_script = SlotScript(
            self._cluster, self.nodes, load("unchecked"), lineage_at=1
        )
        self._read_script = SlotScript(self._cluster, self.nodes, load("read"), lineage_at=1)
        self._slot_batches: dict[int, DecisionBatch] = {}
        self._slots: dict[UsageKey, int] = {}
        self._unacked_slots: dict[int, tuple[int, dict[UsageKey, Counter[str]]]] = {}

    def _open(self, url: str, timeout: float, max_connections: int) -> None:
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._cluster_url.seeds],
            require_full_coverage=False,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # a node that does not answer: two more tries, then its keys' callers are told
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
            **self._cluster_url.client_options(),
        )
        self._redis = self._cluster

    def _slot(self, key: UsageKey) -> int:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= _SLOT_CACHE_SIZE:
                self._slots.clear()
            slot = self._slots[key] = slot_of(self._key(key))
        return slot

    def _node_down(self, node: Node) -> StoreUnavailable:
        reason = f"circuit open for the cluster node {node_name(node)}"
        return StoreUnavailable("Redis", redact_url(self._url), reason)

    # -- the breakers: one per primary -------------------------------------------------------

    def _allow(self) -> bool:
        return False  # reads are not held back by any one node's circuit

    def _judge(self, exc: BaseException) -> None:
        """A redis-py call failed: tell the breaker of the node it failed on, if it says that
        node serves nothing now. (The decisions' own connections report in ``cluster.py``.)"""
        node = getattr(exc, "connection", None)
        if isinstance(node, ClusterNode) and unreachable(exc):
            self.nodes.breaker((node.host, int(node.port))).failed()

    # -- decisions ---------------------------------------------------------------------------

    def admit(
        self, key: UsageKey, day: str, limit: int | None, allow_overage: bool
    ) -> asyncio.Future[Admission]:
        slot = self._slot(key)
        node = self.nodes.owner(slot)
        if node is not None and not self.nodes.breaker(node).allow():
            raise self._node_down(node)
        self._dirty.add(key)
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        self._add(((key, day, limit, allow_overage), False), future)
        return future

    def _add(self, entry: tuple[Decision, bool], future: asyncio.Future[Admission]) -> None:
        name, terms = self._pack(entry[0])
        slot = self._slot(entry[0][0])
        batch = self._slot_batches.get(slot)
        if batch is None:
            if not self._slot_batches:  # the first of this turn: send when the turn ends
                asyncio.get_running_loop().call_soon(self._send_batch)
            batch = self._slot_batches[slot] = DecisionBatch()
        batch.add(name, terms, entry, future)

    def _send_batch(self) -> None:
        batches, self._slot_batches = self._slot_batches, {}
        for slot, batch in batches.items():
            command = functools.partial(batch.command, self._packed_sha)  # the node's lineage
            reply = self.nodes.send(slot, command, ADMIT_SCRIPT)
            reply.add_done_callback(functools.partial(self._slot_replied, batch))

    def _slot_replied(self, batch: DecisionBatch, reply: asyncio.Future[Any]) -> None:
        error = reply.exception()
        flat = None if error is not None else reply.result()
        if error is None and isinstance(flat, list):
            self._settle(batch, flat)
        else:
            self._fail_slot(batch, error or flat)

    def _fail_slot(self, batch: DecisionBatch, why: object) -> None:
        reason = str(why) or type(why).__name__
        failure = StoreUnavailable("Redis", redact_url(self._url), reason)
        for future in batch.futures:
            if not future.done():
                future.set_exception(failure)

    # -- the flush: one script call per slot -------------------------------------------------

    async def add(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """``RedisCounters.add``, slot by slot: each slot's batch is numbered and sent alone,
        and one that failed goes again first, with its number, at the next call. Each call
        also has every primary asked its lineage again, in the background (``recheck``)."""
        self.nodes.recheck()
        self._owe(increments)
        async with self._adding:
            owed, self._owed = self._owed, defaultdict(Counter)
            by_slot: defaultdict[int, dict[UsageKey, Counter[str]]] = defaultdict(dict)
            for key, fields in owed.items():
                by_slot[self._slot(key)][key] = fields
            slots = sorted(set(by_slot) | set(self._unacked_slots))
            outcomes = await asyncio.gather(
                *(self._flush_slot(slot, by_slot.get(slot)) for slot in slots),
                return_exceptions=True,
            )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _flush_slot(self, slot: int, owed: dict[UsageKey, Counter[str]] | None) -> None:
        unacked = self._unacked_slots.get(slot)
        if unacked is not None:
            try:
                await self._send_slot(slot, *unacked)
            except BaseException:
                if owed:
                    self._owe(owed)  # not numbered yet: owed as before
                raise
            del self._unacked_slots[slot]
        if owed:
            self._sequence += 1
            self._unacked_slots[slot] = (self._sequence, owed)
            await self._send_slot(slot, self._sequence, owed)
            del self._unacked_slots[slot]

    async def _send_slot(
        self, slot: int, sequence: int, batch: Mapping[UsageKey, Counter[str]]
    ) -> None:
        """``RedisCounters._send`` for the hashes of one slot, on that slot's primary."""
        keys = list(batch)
        names = [self._key(key) for key in keys]
        try:
            unchecked = await self._unchecked_script(keys=names, args=[MAX_TALLY, _ITS_NODE])
        except RedisError as exc:
            raise StoreUnavailable("Redis", redact_url(self._url), str(exc)) from exc
        for index in unchecked:  # not restored, not checked on this node's data set, not a hash
            await self._hydrate(keys[int(index) - 1], UNKNOWN_LINEAGE)
        # The marker shares the first tenant's hash tag, so its slot: a batch sent again has the
        # same first tenant, and the next batch of the slot is sent only once this one is done.
        marker = f"{self._marker}:{{{keys[0][0]}}}"
        try:
            skipped = await self._add_script(
                keys=[*names, marker], args=self._add_arguments(sequence, batch)
            )
        except RedisError as exc:
            raise StoreUnavailable("Redis", redact_url(self._url), str(exc)) from exc
        self._applied(keys, batch, skipped)

    # -- reads -------------------------------------------------------------------------------

    async def _hgetall(self, keys: list[UsageKey]) -> tuple[int, list[dict[str, int] | None]]:
        """``RedisCounters._hgetall``, one ``lua/read.lua`` call per slot: ``hydrated`` is
        there (as 1) only when the hash is stamped with the lineage of the node that holds it.
        (The lineage returned is unknown: each restore is given its node's own.)"""
        by_slot: defaultdict[int, list[int]] = defaultdict(list)
        for index, key in enumerate(keys):
            by_slot[self._slot(key)].append(index)
        names = [self._key(key) for key in keys]
        calls = [
            self._read_script.send([names[index] for index in indexes], [MAX_TALLY, _ITS_NODE])
            for indexes in by_slot.values()
        ]
        hashes: list[dict[str, int] | None] = [None] * len(keys)
        for indexes, reply in zip(by_slot.values(), await _replies(calls, self._url), strict=True):
            for index, found in zip(indexes, reply, strict=True):
                if found is None:  # a key of another type
                    continue
                stamped, raw = found
                fields = dict(zip(raw[::2], raw[1::2], strict=True))
                tallies = sound_tallies(fields, names[index])
                tallies.pop(HYDRATED, None)
                if stamped == 1:
                    tallies[HYDRATED] = 1
                hashes[index] = tallies
        return UNKNOWN_LINEAGE, hashes

    async def snapshots(self, keys: Iterable[UsageKey]) -> dict[UsageKey, dict[str, int]]:
        """Read each primary's keys apart: the keys of a node that does not answer are left
        out and stay owed to the ledger (the next flush tries them again)."""
        ordered = list(keys)
        if not ordered:
            return {}
        if not self.nodes.primaries():
            try:
                await self.nodes.refresh()
            except RedisError:
                pass  # read as one group: redis-py finds the nodes
        groups: defaultdict[Node | None, list[UsageKey]] = defaultdict(list)
        for key in ordered:
            groups[self.nodes.owner(self._slot(key))].append(key)
        outcomes = await asyncio.gather(
            *(RedisCounters.snapshots(self, group) for group in groups.values()),
            return_exceptions=True,
        )
        found: dict[UsageKey, dict[str, int]] = {}
        failures: list[StoreUnavailable] = []
        for (node, group), outcome in zip(groups.items(), outcomes, strict=True):
            if isinstance(outcome, StoreUnavailable):
                self.mark_dirty(group)
                failures.append(outcome)
                where = "an unknown node" if node is None else node_name(node)
                logger.warning("usage of %d hashes on %s not read: %s", len(group), where, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                found.update(outcome)
        if failures and len(failures) == len(groups):
            raise failures[0]
        return found

    async def ping(self) -> None:
        """Ready when the nodes that answer say ``cluster_state:ok``, and one does."""
        try:
            await self.nodes.refresh()
            states = await self.nodes.states()
        except RedisError as exc:
            raise StoreUnavailable("Redis", redact_url(self._url), str(exc)) from exc
        bad = {node: state for node, state in states.items() if state not in ("ok", None)}
        if bad or not any(state == "ok" for state in states.values()):
            where = ", ".join(f"{host}:{port} {state}" for (host, port), state in bad.items())
            reason = f"cluster_state is not ok ({where or 'no node answered'})"
            raise StoreUnavailable("Redis", redact_url(self._url), reason)

    async def close(self) -> None:
        batches, self._slot_batches = self._slot_batches, {}
        for batch in batches.values():
            self._fail_slot(batch, "the counter store was closed")
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.nodes.close()
        await self._cluster.aclose()


async def _replies(calls: list[asyncio.Future[Any]], url: str) -> list[Any]:
    """The replies of script calls, once all have come; any that failed fails them all."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, RedisError):  # a lost connection, or an error reply
            raise StoreUnavailable("Redis", redact_url(url), str(outcome)) from outcome
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes
