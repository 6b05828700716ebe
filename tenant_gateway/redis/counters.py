"""The usage counters on Redis (``RedisCounters``): the quota decision in one round trip, the
tallies in batches.

The hashes, fields and the quota decision are those of ``quota.py``. Hostile or corrupt values:
a command Redis refuses for one key (a field that is not a number, a sum past the bound, a key
of another type) fails that entry only, never the rest of a shared batch, and tells the circuit
breaker that Redis answered. What counts against it is a lost connection or an error reply by
which Redis says it serves nothing now (``replies.py``). A hash a decision cannot use is set
aside (``<key>:set-aside``) and restored from the ledger.

Counters never trail the ledger: each hash is stamped with the lineage of the server's data set
it was last restored or checked on (``identity.py``), which every new pipelined connection
learns. A hash stamped with another (the server restarted from an older dump, a replica was
promoted, a primary came back as another's replica) is checked against the ledger, and raised
to it, before the next decision on it, the next tally added to it, or the next read of it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from tenant_gateway.breaker import Breaker, BreakerState
from tenant_gateway.clock import Clock
from tenant_gateway.exceptions import StoreUnavailable, redact_url
from tenant_gateway.models import UsageKey
from tenant_gateway.quota import Admission, DirtyKeys, HydrateSource, refunds_last
from tenant_gateway.redis.clients import pipelined_redis, redis_client
from tenant_gateway.redis.decisions import ADMIT_SCRIPT, Decision, DecisionBatch
from tenant_gateway.redis.identity import ServerWatch, lineage_of, refusal_of
from tenant_gateway.redis.lua import load
from tenant_gateway.redis.pipeline import bulk
from tenant_gateway.redis.replies import demoted, unreachable
from tenant_gateway.redis.roles import WrongServer, check_server
from tenant_gateway.tallies import (
    HYDRATED,
    MAX_ROUTES,
    MAX_TALLY,
    OTHER_ROUTES,
    sound_tallies,
)

__all__ = ["RedisCounters"]

logger = logging.getLogger("tenant_gateway.quota")

_PACKED_CACHE_SIZE = 100_000
_HISTORY_SECONDS = 400 * 86_400  # keep a period's tallies for 13 months
_MARKER_SECONDS = 86_400  # how long Redis remembers a writer's last batch (for its retries)


class RedisCounters(DirtyKeys):
    """Counters shared by every worker and host using one Redis."""

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
        super().__init__(hydrate_from)
        self._url = url
        self.breaker = Breaker("redis", clock)
        self._prefix = key_prefix
        self._server = ServerWatch()  # which server the decisions' connection reached last
        self._open(url, timeout, max_connections)
        self._packed_sha = bulk(self._redis.register_script(ADMIT_SCRIPT).sha)
        self._hydrate_script = self._redis.register_script(load("hydrate"))
        self._add_script = self._redis.register_script(load("add"))
        # Exactly-once flushes: each batch carries this writer's next number, and Redis keeps
        # the last one applied; a batch whose reply was lost is sent again as it was.
        self._marker = f"{key_prefix}flushed:{secrets.token_hex(8)}"
        self._sequence = 0
        self._unacked: tuple[int, dict[UsageKey, Counter[str]]] | None = None
        self._adding = asyncio.Lock()
        self._batch = DecisionBatch()
        self._inflight: set[asyncio.Task[None]] = set()
        # RESP bytes reused by every decision (cleared if they ever grow large).
        self._packed_names: dict[UsageKey, bytes] = {}
        self._packed_terms: dict[tuple[int | None, bool, str], bytes] = {}

    def _open(self, url: str, timeout: float, max_connections: int) -> None:
        """The clients: redis-py's for everything but the decisions, which bypass it on their
        own pipelined connection (``redis/pipeline.py``); for a Sentinel service, both follow
        its primary (``redis/clients.py``). A cluster opens its own
        (``redis/cluster_counters.py``)."""
        # A blocking pool: a burst of requests waits (up to ``timeout``) for a connection
        # instead of failing with "too many connections".
        client = redis_client(
            url,
            timeout=timeout,
            blocking=True,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._redis: aioredis.Redis | RedisCluster = client
        self._pipe = pipelined_redis(url, client, timeout=timeout, greet=self._server.greet)

    def _key(self, key: UsageKey) -> str:
        return f"{self._prefix}usage:{{{key[0]}}}:{key[1]}"

    def _unavailable(self, exc: RedisError) -> StoreUnavailable:
        """The error the caller sees, once the breaker has been told what ``exc`` says."""
        self._judge(exc)
        return StoreUnavailable("Redis", redact_url(self._url), str(exc) or type(exc).__name__)

    def _judge(self, exc: BaseException) -> None:
        """Report a failed call to the breaker. Redis unreachable (``replies.py``): a
        failure. Any other error reply (a key of another type, a script it does not know):
        Redis answered. Anything else (a cancellation) says nothing about Redis, but frees the
        probe if the call was it."""
        if demoted(exc):  # the next connection asks where the primary is now
            self._pipe.disconnect()
        if unreachable(exc):
            self.breaker.failed()
        elif isinstance(exc, ResponseError):
            self.breaker.succeeded()
        else:
            self.breaker.released()

    def _allow(self) -> bool:
        """Fail at once while the circuit is open (see ``breaker.py``). True when this call is
        the half-open probe: however it ends, it must report to the breaker."""
        if not self.breaker.allow():
            raise StoreUnavailable("Redis", redact_url(self._url), "circuit open after failures")
        return self.breaker.state is not BreakerState.CLOSED

    async def _hydrate(self, key: UsageKey, lineage: int) -> None:
        """Restore the hash, or check it against the ledger (``lua/hydrate.lua``), and stamp
        it with ``lineage``: the server's, as the call that found it unchecked saw it."""
        restored = await self._restored(key)
        args: list[int | str] = [MAX_TALLY, _HISTORY_SECONDS, lineage]
        for field, amount in restored.items():
            if field != HYDRATED:
                args += [field, amount]
        name = self._key(key)
        try:
            outcome = await self._hydrate_script(keys=[name], args=args)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.succeeded()
        if outcome == 2:
            logger.warning("%s was not a hash: set aside, restored from the ledger", name)
        elif outcome == 4:
            logger.warning("%s was behind the ledger (the Redis server changed): raised", name)

    def admit(
        self, key: UsageKey, day: str, limit: int | None, allow_overage: bool
    ) -> asyncio.Future[Admission]:
        """Decisions taken in the same event-loop turn travel together: one script call on the
        pipelined connection, one round trip (see ``decisions.py``). Each is still decided
        atomically and in order: batching changes the cost, never the count. Not ``async``:
        the caller awaits the decision's own future, with no coroutine in between."""
        self._allow()
        self._dirty.add(key)
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        self._add(((key, day, limit, allow_overage), False), future)
        return future

    def _add(self, entry: tuple[Decision, bool], future: asyncio.Future[Admission]) -> None:
        name, terms = self._pack(entry[0])
        if not self._batch.futures:  # the first of this turn: send when the turn ends
            asyncio.get_running_loop().call_soon(self._send_batch)
        self._batch.add(name, terms, entry, future)

    def _pack(self, decision: Decision) -> tuple[bytes, bytes]:
        """The decision's hash name and (limit, overage, day), as RESP bytes reused."""
        key, day, limit, allow_overage = decision
        name = self._packed_names.get(key)
        if name is None:
            if len(self._packed_names) >= _PACKED_CACHE_SIZE:
                self._packed_names.clear()
            name = self._packed_names[key] = bulk(self._key(key))
        terms = self._packed_terms.get((limit, allow_overage, day))
        if terms is None:
            if len(self._packed_terms) >= _PACKED_CACHE_SIZE:
                self._packed_terms.clear()
            terms = bulk(-1 if limit is None else limit) + bulk(int(allow_overage)) + bulk(day)
            self._packed_terms[(limit, allow_overage, day)] = terms
        return name, terms

    async def _restore_then_decide(
        self, decision: Decision, future: asyncio.Future[Admission]
    ) -> None:
        """A decision found its hash unrestored: fill it from the ledger, then decide again."""
        try:
            await self._hydrate(decision[0], self._server.lineage)
        except Exception as exc:  # the request fails with it, whatever it is
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            self._add((decision, True), future)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, DecisionBatch()
        if not batch.futures:  # failed by close() meanwhile
            return
        if self._pipe.connected:
            self._write(batch, retried=False)
        else:
            self._spawn(self._connect_and_write(batch))

    def _write(self, batch: DecisionBatch, *, retried: bool) -> None:
        try:
            reply = self._pipe.send_packed(batch.command(self._packed_sha, self._server.packed))
        except RedisError as exc:
            self._fail_batch(batch, exc)
            return
        reply.add_done_callback(functools.partial(self._deliver, batch, retried))

    def _deliver(self, batch: DecisionBatch, retried: bool, reply: asyncio.Future[Any]) -> None:
        error = reply.exception()
        flat = None if error is not None else reply.result()
        if isinstance(flat, ResponseError):
            if str(flat).startswith("NOSCRIPT") and not retried:  # Redis restarted or flushed
                self._spawn(self._load_and_write(batch))
                return
            error = flat
        if error is not None or not isinstance(flat, list):
            self._fail_batch(batch, error or ResponseError(f"unexpected reply {flat!r}"))
            return
        self.breaker.succeeded()
        self._settle(batch, flat)

    def _settle(self, batch: DecisionBatch, flat: list[Any]) -> None:
        """Answer each decision of a batch from the script's reply; one whose hash must be
        restored first is restored, then decided again."""
        set_aside: set[UsageKey] = set()
        for index, future in enumerate(batch.futures):
            if future.done():
                continue  # the request was cancelled
            admitted = flat[2 * index]
            if admitted >= 0:
                future.set_result(Admission(admitted == 1, flat[2 * index + 1]))
                continue
            decision, restored = batch.entries[index]
            if admitted == -2 and decision[0] not in set_aside:
                set_aside.add(decision[0])
                name = self._key(decision[0])
                logger.warning("%s held values no tally can: set aside, restoring it", name)
            if restored:  # restored just before, and already gone again
                reason = "the usage hash vanished while it was restored"
                future.set_exception(StoreUnavailable("Redis", redact_url(self._url), reason))
            else:
                self._spawn(self._restore_then_decide(decision, future))

    def _fail_batch(self, batch: DecisionBatch, exc: BaseException) -> None:
        if isinstance(exc, RedisError):
            error = self._unavailable(exc)
        else:  # the connection attempt was cancelled (close) or broke in an unforeseen way
            self._judge(exc)
            error = StoreUnavailable("Redis", redact_url(self._url), repr(exc))
        for future in batch.futures:
            if not future.done():
                future.set_exception(error)

    async def _connect_and_write(self, batch: DecisionBatch) -> None:
        try:
            await self._pipe.connect()
        except BaseException as exc:  # cancelled at close included: no future left waiting
            self._fail_batch(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._write(batch, retried=False)

    async def _load_and_write(self, batch: DecisionBatch) -> None:
        """Load the script on the server the pipelined connection is on (a promoted replica
        may not have it), then write the batch again."""
        try:
            loaded = await self._pipe.send("SCRIPT", "LOAD", ADMIT_SCRIPT)
        except RedisError as exc:
            self._fail_batch(batch, exc)
            return
        if isinstance(loaded, ResponseError):
            self._fail_batch(batch, loaded)
            return
        if self._pipe.connected:
            self._write(batch, retried=True)
        else:
            self._fail_batch(batch, RedisConnectionError("Redis connection lost"))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def add(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """Add tallies with one script call (``lua/add.lua``); one hash's trouble stays its
        own (see the script). Exactly once: a batch whose reply was lost goes again under its
        number, which Redis recognises (so may redis-py's own retry of the call), before
        anything owed since; what a set-aside hash did not take goes with the next call."""
        self._owe(increments)
        async with self._adding:
            if self._unacked is not None:
                await self._send(*self._unacked)
                self._unacked = None
            if self._owed:
                self._sequence += 1
                self._unacked = (self._sequence, self._owed)
                self._owed = defaultdict(Counter)
                await self._send(*self._unacked)
                self._unacked = None

    async def _send(self, sequence: int, batch: Mapping[UsageKey, Counter[str]]) -> None:
        """One batch, after restoring any hash the ledger must fill first (a tally added to a
        lost hash would otherwise hide the loss from the next decision)."""
        keys = list(batch)
        lineage, stamps = await self._read_stamped(
            lambda pipe: [pipe.hget(self._key(key), HYDRATED) for key in keys]
        )
        stamp = str(lineage).encode()
        for key, stamped in zip(keys, stamps, strict=True):
            if stamped != stamp:  # not restored, not checked on this lineage, or not a hash
                await self._hydrate(key, lineage)
        try:
            skipped = await self._add_script(
                keys=[*(self._key(key) for key in keys), self._marker],
                args=self._add_arguments(sequence, batch),
            )
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.succeeded()
        self._applied(keys, batch, skipped)

    @staticmethod
    def _add_arguments(sequence: int, batch: Mapping[UsageKey, Counter[str]]) -> list[int | str]:
        """``add.lua``'s ARGV for a batch."""
        args: list[int | str] = [MAX_TALLY, sequence, _MARKER_SECONDS, _HISTORY_SECONDS]
        args += [MAX_ROUTES, OTHER_ROUTES]
        for fields in batch.values():
            args.append(len(fields))
            for field, amount in refunds_last(fields):
                args += [field, amount]
        return args

    def _applied(
        self, keys: list[UsageKey], batch: Mapping[UsageKey, Counter[str]], skipped: list[Any]
    ) -> None:
        """What ``add.lua`` answered: what a set-aside hash did not take is owed again."""
        self._dirty.update(keys)
        for at in range(1, len(skipped), 3):
            key = keys[int(skipped[at]) - 1]
            field, reason = (_text(part) for part in skipped[at + 1 : at + 3])
            if not field:  # the hash was set aside: restored and sent again by the next call
                logger.warning("%s held values no tally can: set aside", self._key(key))
                self._owe({key: batch[key]})
            else:
                logger.warning("usage increment dropped: %s %s %.80r: %s", *key, field, reason)

    async def _read_stamped(
        self, queue: Callable[[Pipeline | ClusterPipeline], object]
    ) -> tuple[int, list[Any]]:
        """``_read_first``, with the lineage of the server that answered (asked on the same
        connection: a server that restarted a moment ago is not taken for the one before)."""
        server, replication, *results = await self._read_first(
            lambda pipe: (pipe.info("server"), pipe.info("replication"), queue(pipe))
        )
        lineage = lineage_of(server, replication)
        if lineage != self._server.lineage:  # the decisions' connection is elsewhere: drop it
            self._pipe.disconnect()
        return lineage, results

    async def _read_first(self, queue: Callable[[Pipeline | ClusterPipeline], object]) -> list[Any]:
        """``_read_all`` as the first step of a flush or a read, through the breaker."""
        probe = self._allow()
        try:
            return await self._read_all(queue)
        except BaseException:
            if probe:  # cancelled before Redis answered (else it reported): the next call probes
                self.breaker.released()
            raise

    async def _read_all(self, queue: Callable[[Pipeline | ClusterPipeline], object]) -> list[Any]:
        """Run read-only commands in one pipeline; a command Redis refuses (a key of another
        type) answers its exception in place, but one by which Redis serves nothing now
        (``replies.py``) fails them all. A pooled connection found dead (Redis came back
        after an outage) is replaced once: redis-py retries single commands, not pipelines,
        and reads are safe to repeat."""
        try:
            try:
                results = await self._pipeline(queue)
            except RedisConnectionError:
                results = await self._pipeline(queue)  # once more, on a fresh connection
            for result in results:
                if isinstance(result, RedisError) and unreachable(result):
                    raise result
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.succeeded()
        return results

    async def _pipeline(self, queue: Callable[[Pipeline | ClusterPipeline], object]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            queue(pipe)
            return list(await pipe.execute(raise_on_error=False))

    async def _hgetall(self, keys: list[UsageKey]) -> tuple[int, list[dict[str, int] | None]]:
        """The server's lineage, and each hash's sound tallies (see ``tallies.py``), or None
        for a key of another type. ``hydrated`` is there (as 1) only when the hash was restored
        or checked on that lineage: one that was not is, to its readers, not restored yet."""
        lineage, results = await self._read_stamped(
            lambda pipe: [pipe.hgetall(self._key(key)) for key in keys]
        )
        hashes = [
            None if isinstance(raw, Exception) else sound_tallies(raw, self._key(key))
            for key, raw in zip(keys, results, strict=True)
        ]
        for tallies in hashes:
            if tallies is not None and tallies.pop(HYDRATED, None) == lineage:
                tallies[HYDRATED] = 1
        return lineage, hashes

    async def read(self, key: UsageKey) -> dict[str, int]:
        lineage, (tallies,) = await self._hgetall([key])
        if tallies is None or HYDRATED not in tallies:
            await self._hydrate(key, lineage)
            _, (tallies,) = await self._hgetall([key])
        if tallies is None:  # replaced again since: this read fails, nothing else
            reason = "the usage hash was replaced by another type"
            raise StoreUnavailable("Redis", redact_url(self._url), reason)
        return tallies

    async def snapshots(self, keys: Iterable[UsageKey]) -> dict[UsageKey, dict[str, int]]:
        ordered = list(keys)
        if not ordered:
            return {}
        _, results = await self._hgetall(ordered)
        return {
            key: tallies
            for key, tallies in zip(ordered, results, strict=True)
            if tallies is not None and HYDRATED in tallies
        }

    async def forget(self, keys: Iterable[UsageKey]) -> None:
        self._restores.forget()
        names = [self._key(key) for key in keys]
        if not names:
            return
        try:
            await self._redis.delete(*names)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.succeeded()

    async def ping(self) -> None:
        """Redis answers, and is a server that can hold the counters: a primary, not a replica
        or a sentinel (``identity.py``), nor one node of a cluster (``roles.py``)."""
        server, replication = await self._read_all(
            lambda pipe: (pipe.info("server"), pipe.info("replication"))
        )
        try:
            refusal = refusal_of(server, replication)  # None too when INFO is refused (an ACL)
            if refusal is not None:
                raise WrongServer(refusal)
            if isinstance(self._redis, aioredis.Redis):
                where = self._redis.connection_pool.connection_kwargs
                await check_server(self._redis, f"{where.get('host')}:{where.get('port')}")
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        """Fail what is still waiting, stop the work in flight, close both clients."""
        batch, self._batch = self._batch, DecisionBatch()
        if batch.futures:
            self._fail_batch(batch, RedisConnectionError("the counter store was closed"))
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._pipe.close()
        await self._redis.aclose()


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
