"""Redis Cluster for the commands the counters send themselves: which primary serves a hash
slot, one pipelined connection to each (``pipeline.py``), and the cluster's redirections.

The slot map comes from ``CLUSTER SHARDS`` (``CLUSTER SLOTS`` before Redis 7), asked of the
first node that answers: known nodes first, then the URL's. A command for a slot is written at
once on the connection of the primary the map names, and its reply is followed as the cluster
asks:

- ``MOVED <slot> <host:port>``: the slot has another owner. The map is patched at once (and
  refreshed whole in the background, at most once a second) and the command sent there.
- ``ASK <slot> <host:port>``: the slot is being migrated and the key is already on the target:
  ``ASKING`` then the command, on the target, this once.
- ``TRYAGAIN``: the command's keys are split by a migration in progress: sent again 50 ms later.
- ``NOSCRIPT``: that node does not know the script (restarted, flushed, or new to the cluster):
  ``SCRIPT LOAD`` there, then the command again.

Redirections and retries are bounded (``MAX_REDIRECTS``, ``MAX_TRYAGAIN``); past them the reply
is the error. Each primary has a circuit breaker of its own (``breaker.py``): a node that does
not answer, or says it serves nothing now (``CLUSTERDOWN``, ``LOADING``…), fails the commands
for its slots only; a redirection or ``TRYAGAIN`` is an answer, about one slot.

A script call that stamps or checks usage hashes carries the lineage of the node it is written
on (``cluster_lineage.py``): it is given as a function of that lineage (``Command``), packed
again for the node a redirection sends it to.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from redis import exceptions as errors

from tenant_gateway.breaker import Breaker, BreakerState
from tenant_gateway.clock import Clock
from tenant_gateway.redis.cluster_lineage import NodeLineages
from tenant_gateway.redis.pipeline import PipelinedRedis, pack_command
from tenant_gateway.redis.replies import demoted, unreachable
from tenant_gateway.redis.slots import (
    SLOTS,
    Node,
    address,
    node_name,
    owners_from_shards,
    owners_from_slots,
    text,
)
from tenant_gateway.redis.urls import ClusterURL

__all__ = ["ClusterNodes", "Command"]

MAX_REDIRECTS = 5
MAX_TRYAGAIN = 10
TRYAGAIN_DELAY = 0.05
REFRESH_INTERVAL = 1.0  # seconds between two refreshes a redirection asks for

_ASKING = pack_command(("ASKING",))
_REDIRECTIONS = ("MOVED", "ASK", "TRYAGAIN", "NOSCRIPT")

Command = bytes | Callable[[bytes], bytes]
"""A command as RESP, or a function of the lineage (a RESP bulk string) of the node it is
written on that packs it."""


class ClusterNodes:
    """The primaries of a cluster: the slot map, a pipelined connection and a breaker each."""

    def __init__(self, url: ClusterURL, *, timeout: float, clock: Clock) -> None:
        self._url = url
        self._timeout = timeout
        self._clock = clock
        self._owners: list[Node | None] = [None] * SLOTS
        self._primaries: list[Node] = []
        self._pipes: dict[Node, PipelinedRedis] = {}
        self._breakers: dict[Node, Breaker] = {}
        self.lineages = NodeLineages()
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_INTERVAL
        self._inflight: set[asyncio.Task[None]] = set()

    # -- the map -----------------------------------------------------------------------------

    def owner(self, slot: int) -> Node | None:
        return self._owners[slot]

    def primaries(self) -> list[Node]:
        return self._primaries

    def breaker(self, node: Node) -> Breaker:
        breaker = self._breakers.get(node)
        if breaker is None:
            breaker = self._breakers[node] = Breaker(f"redis {node_name(node)}", self._clock)
        return breaker

    def _set_owners(self, owners: list[Node | None]) -> None:
        """A node given a slot it did not serve is asked its lineage before it is written to
        again: it may be a replica just promoted, on a connection opened before."""
        for node in {new for old, new in zip(self._owners, owners, strict=True) if new != old}:
            if node is not None:
                self.lineages.doubt(node)
        self._owners = owners
        self._primaries = sorted({node for node in owners if node is not None})

    async def refresh(self) -> None:
        """Load the slot map again (concurrent callers share one attempt)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._load_map())
        await asyncio.shield(self._refreshing)

    def _refresh_soon(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._refreshed_at < REFRESH_INTERVAL:
            return
        self._refreshed_at = loop.time()
        self._spawn(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except errors.RedisError:
            pass  # the next redirection or command tries again

    async def _load_map(self) -> None:
        known = self.primaries()
        healthy = [node for node in known if self.breaker(node).state is BreakerState.CLOSED]
        others = [node for node in known if node not in healthy]
        sources = list(dict.fromkeys([*healthy, *self._url.seeds, *others]))
        failure: Exception | None = None
        for node in sources:
            try:
                owners = await self._ask_map(node)
            except (errors.RedisError, ValueError, TypeError, IndexError) as exc:
                failure = exc
                continue
            self._set_owners(owners)
            self._refreshed_at = asyncio.get_running_loop().time()
            return
        raise errors.ConnectionError(f"no cluster node answered CLUSTER SHARDS: {failure}")

    async def _ask_map(self, node: Node) -> list[Node | None]:
        pipe = await self._connected(node)
        reply = await pipe.send("CLUSTER", "SHARDS")
        if isinstance(reply, errors.ResponseError):  # Redis 6: no CLUSTER SHARDS
            reply = await pipe.send("CLUSTER", "SLOTS")
            if isinstance(reply, errors.ResponseError):
                raise reply
            return owners_from_slots(reply, node[0])
        return owners_from_shards(reply, node[0], self._url.tls)

    async def states(self) -> dict[Node, str | None]:
        """Each known primary's ``cluster_state`` (``ok``, ``fail``; None: no answer)."""
        nodes = self.primaries()
        return dict(zip(nodes, await asyncio.gather(*map(self._state, nodes)), strict=True))

    async def _state(self, node: Node) -> str | None:
        try:
            pipe = await self._connected(node)
            info = await pipe.send("CLUSTER", "INFO")
        except errors.RedisError as exc:
            self._report(node, exc)
            return None
        self._report(node, info)
        for line in text(info).splitlines():
            if line.startswith("cluster_state:"):
                return line.partition(":")[2].strip()
        return str(info)

    # -- commands ----------------------------------------------------------------------------

    def send(self, slot: int, command: Command, script: str | None = None) -> asyncio.Future[Any]:
        """Send ``command`` to the primary of ``slot``, following redirections; the future
        gets the final reply (an error reply is returned, as ``PipelinedRedis`` does) or raises
        the connection's error. ``script``: the source to load on ``NOSCRIPT``."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        node = self._owners[slot]
        pipe = self._pipes.get(node) if node is not None else None
        if (
            node is not None
            and pipe is not None
            and pipe.connected
            and not self.lineages.doubtful(node)
        ):
            reply = pipe.send_packed(self._packed(node, command))
            reply.add_done_callback(
                functools.partial(self._first_reply, node, slot, command, script, done)
            )
        else:
            self._spawn(self._follow(slot, command, script, done, None))
        return done

    def _first_reply(
        self,
        node: Node,
        slot: int,
        command: Command,
        script: str | None,
        done: asyncio.Future[Any],
        reply: asyncio.Future[Any],
    ) -> None:
        """The usual case without a task: the node answered, and not with a redirection."""
        error = reply.exception()
        value = None if error is not None else reply.result()
        if error is None and not _redirection(value):
            self._report(node, value)
            if not done.done():
                done.set_result(value)
            return
        self._spawn(self._follow(slot, command, script, done, (node, error, value)))

    async def _follow(
        self,
        slot: int,
        command: Command,
        script: str | None,
        done: asyncio.Future[Any],
        first: tuple[Node, BaseException | None, Any] | None,
    ) -> None:
        try:
            value = await self._route(slot, command, script, first)
        except BaseException as exc:
            if not done.done():
                done.set_exception(
                    exc
                    if isinstance(exc, Exception)
                    else errors.ConnectionError("the cluster connections were closed")
                )
            if not isinstance(exc, Exception):
                raise
            return
        if not done.done():
            done.set_result(value)

    async def _route(
        self,
        slot: int,
        command: Command,
        script: str | None,
        pending: tuple[Node, BaseException | None, Any] | None,
    ) -> Any:
        asking: Node | None = None
        redirects = retries = 0
        loaded = False
        while True:
            if pending is None:
                node = asking or self._owners[slot]
                if node is None:
                    await self.refresh()
                    node = self._owners[slot]
                    if node is None:
                        raise errors.ClusterDownError(f"slot {slot} is served by no node")
                pending = await self._attempt(node, command, asked=asking is not None)
            node, error, value = pending
            pending = None
            if error is not None:
                self._report(node, error)
                raise error
            words = str(value).split() if isinstance(value, errors.ResponseError) else [""]
            code = words[0]
            if code in ("MOVED", "ASK") and redirects < MAX_REDIRECTS and len(words) == 3:
                redirects += 1
                target = address(words[2], node[0])
                if code == "MOVED":
                    owners = list(self._owners)
                    owners[slot], asking = target, None
                    self._set_owners(owners)
                    self._refresh_soon()
                else:
                    asking = target
                continue
            if code == "TRYAGAIN" and retries < MAX_TRYAGAIN:
                retries += 1
                self._report(node, value)
                await asyncio.sleep(TRYAGAIN_DELAY)
                continue
            if code == "NOSCRIPT" and script is not None and not loaded:
                loaded = True
                pipe = await self._connected(node)
                answer = await pipe.send("SCRIPT", "LOAD", script)
                if isinstance(answer, errors.ResponseError):
                    value = answer
                else:
                    asking = node if asking is not None else None
                    continue
            self._report(node, value)
            return value

    async def _attempt(
        self, node: Node, command: Command, *, asked: bool
    ) -> tuple[Node, BaseException | None, Any]:
        """One try on one node: (node, the connection's error or None, the reply)."""
        try:
            pipe = await self._connected(node)
            if asked:  # ASKING's OK comes first, on the same connection
                pipe.send_packed(_ASKING).add_done_callback(_retrieved)
            return node, None, await pipe.send_packed(self._packed(node, command))
        except errors.RedisError as exc:
            return node, exc, None

    def _packed(self, node: Node, command: Command) -> bytes:
        return command if isinstance(command, bytes) else command(self.lineages.packed(node))

    async def _connected(self, node: Node) -> PipelinedRedis:
        """The node's connection, open, and the node's lineage known (``NodeLineages``)."""
        pipe = self._pipes.get(node)
        if pipe is None:
            pipe = self._pipes[node] = PipelinedRedis(
                self._url.node_url(*node),
                timeout=self._timeout,
                greet=lambda ask: self.lineages.learn(node, ask),
            )
        await pipe.connect()
        if self.lineages.doubtful(node):
            await self.lineages.ask(node, pipe.send)
        return pipe

    def recheck(self) -> None:
        """Ask each primary's open connection for its lineage again, in the background."""
        for node in self._primaries:
            pipe = self._pipes.get(node)
            if pipe is not None and pipe.connected:
                self._spawn(self._recheck(node, pipe))

    async def _recheck(self, node: Node, pipe: PipelinedRedis) -> None:
        try:
            await self.lineages.ask(node, pipe.send)
        except errors.RedisError:
            pass  # the connection's next command meets the trouble, and reports it

    def _report(self, node: Node, outcome: object) -> None:
        """Tell the node's breaker what its answer (or failure) says about the node. A node
        that serves nothing now has the map read again (a replica may serve its slots now); a
        write it refused as ``READONLY`` puts its lineage in doubt too."""
        breaker = self.breaker(node)
        if isinstance(outcome, BaseException) and _down(outcome):
            breaker.failed()
            if demoted(outcome):
                self.lineages.doubt(node)
            self._refresh_soon()
        else:
            breaker.succeeded()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def close(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        await self.lineages.close()
        for pipe in self._pipes.values():
            await pipe.close()


def _retrieved(reply: asyncio.Future[Any]) -> None:
    """A reply nobody awaits: its failure is the next command's, and is reported there."""
    if not reply.cancelled():
        reply.exception()


def _redirection(value: object) -> bool:
    return isinstance(value, errors.ResponseError) and str(value).startswith(_REDIRECTIONS)


def _down(exc: BaseException) -> bool:
    """Does ``exc`` say the node serves nothing now? (``TRYAGAIN`` is about one slot.)"""
    return not str(exc).startswith("TRYAGAIN") and unreachable(exc)
