"""The counter stores, memory and Redis, through the same cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from tenant_gateway.breaker import BreakerState
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.quota import CounterStore, MemoryCounters
from tenant_gateway.redis.cluster_counters import ClusterCounters
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.tallies import MAX_ROUTES
from tenant_gateway.usage import UsageRecorder

from .conftest import BACKENDS
from .helpers import proxy_to, through


@dataclass
class FakeLedger:
    """The counters' hydration source: what a ledger would answer for each key, and which keys
    were asked for."""

    rows: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    restores: list[tuple[str, str]] = field(default_factory=list)

    async def read(self, key: tuple[str, str]) -> dict[str, int]:
        self.restores.append(key)
        return self.rows.get(key, {})


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


COUNTER_BACKENDS = [*BACKENDS, "cluster"]
"""The counter stores: memory, one Redis, and a Redis Cluster of three primaries."""


def make_counters(kind: str, request: pytest.FixtureRequest, ledger: FakeLedger) -> CounterStore:
    restore = ledger.read
    if kind == "memory":
        return MemoryCounters(hydrate_from=restore)
    if kind == "cluster":
        url, prefix = (request.getfixturevalue(name) for name in ("cluster_url", "cluster_prefix"))
        return ClusterCounters(url, key_prefix=prefix, hydrate_from=restore)
    url = request.getfixturevalue("redis_url")
    return RedisCounters(
        url, key_prefix=request.getfixturevalue("redis_prefix"), hydrate_from=restore
    )


@pytest.fixture(params=COUNTER_BACKENDS)
async def counters(
    request: pytest.FixtureRequest, ledger: FakeLedger
) -> AsyncIterator[CounterStore]:
    store = make_counters(request.param, request, ledger)
    yield store
    await store.close()


KEY = ("tenant_a", "2026-11")


async def test_concurrent_admissions_are_exact(counters: CounterStore) -> None:
    results = await asyncio.gather(*(counters.admit(KEY, "10", 1000, False) for _ in range(1100)))
    admitted = [r for r in results if r.admitted]
    assert len(admitted) == 1000
    assert sorted(r.used for r in admitted) == list(range(1, 1001))
    tallies = await counters.read(KEY)
    assert tallies["calls"] == 1000
    assert tallies["rejected"] == 100
    assert tallies["rejected:quota"] == 100
    assert tallies["day:10"] == 1000
    assert tallies["rday:10"] == 100


async def test_unlimited_counts_everything(counters: CounterStore) -> None:
    for _ in range(5):
        assert (await counters.admit(KEY, "01", None, False)).admitted
    assert (await counters.read(KEY))["calls"] == 5


async def test_overage_admits_beyond_the_limit(counters: CounterStore) -> None:
    results = [await counters.admit(KEY, "01", 2, True) for _ in range(4)]
    assert [r.admitted for r in results] == [True] * 4
    assert results[-1].used == 4


async def test_counter_is_keyed_by_period_not_limit(counters: CounterStore) -> None:
    for _ in range(3):
        await counters.admit(KEY, "01", 3, False)
    assert not (await counters.admit(KEY, "01", 3, False)).admitted
    # a larger limit (plan upgrade) sees the same count
    decision = await counters.admit(KEY, "01", 10, False)
    assert decision.admitted and decision.used == 4
    # another period starts at zero
    assert (await counters.admit(("tenant_a", "2026-12"), "01", 3, False)).used == 1


async def test_zero_limit_refuses_the_first_call(counters: CounterStore) -> None:
    decision = await counters.admit(KEY, "01", 0, False)
    assert not decision.admitted and decision.used == 0


async def test_added_tallies_restore_first_and_add_up(counters: CounterStore) -> None:
    await counters.add({KEY: {"rejected": 1, "rejected:burst": 1, "rday:02": 1}})
    await counters.add({KEY: {"route|2xx|GET /x": 2}, ("t2", "2026-11"): {"route|5xx|GET /y": 1}})
    tallies = await counters.read(KEY)
    assert tallies["rejected"] == 1 and tallies["rejected:burst"] == 1 and tallies["rday:02"] == 1
    assert tallies["route|2xx|GET /x"] == 2
    assert (await counters.read(("t2", "2026-11"))) == {"route|5xx|GET /y": 1, "hydrated": 1}
    assert await counters.read(("nobody", "2026-11")) == {"hydrated": 1}


async def test_a_missing_hash_is_restored_once_before_deciding(
    counters: CounterStore, ledger: FakeLedger
) -> None:
    ledger.rows[KEY] = {
        "calls": 95,
        "refunded": 2,
        "day:01": 95,
        "rejected": 4,
        "route|2xx|GET /a": 90,
    }
    results = await asyncio.gather(*(counters.admit(KEY, "02", 100, False) for _ in range(20)))
    # 95 - 2 = 93 billable already: 7 more fit
    assert sum(r.admitted for r in results) == 7
    tallies = await counters.read(KEY)
    assert tallies["calls"] == 102 and tallies["rejected"] == 4 + 13
    assert tallies["route|2xx|GET /a"] == 90 and tallies["day:02"] == 7
    assert ledger.restores.count(KEY) == 1  # 20 calls found it missing at once: one ledger read
    snapshot = await counters.snapshots([KEY, ("never", "2026-11")])
    assert list(snapshot) == [KEY]


async def test_a_tally_added_to_a_lost_hash_restores_it_first(
    counters: CounterStore, ledger: FakeLedger
) -> None:
    ledger.rows[KEY] = {"route|2xx|GET /a": 10, "calls": 10}
    await counters.add({KEY: {"route|2xx|GET /a": 1}})  # lands before any decision
    snapshot = await counters.snapshots([KEY])
    assert snapshot[KEY]["route|2xx|GET /a"] == 11 and snapshot[KEY]["calls"] == 10
    decision = await counters.admit(KEY, "01", None, False)
    assert decision.used == 11
    assert ledger.restores.count(KEY) == 1


async def test_refunds_free_quota(counters: CounterStore) -> None:
    for _ in range(3):
        await counters.admit(KEY, "01", 3, False)
    assert not (await counters.admit(KEY, "01", 3, False)).admitted
    await counters.add({KEY: {"refunded": 1, "refday:01": 1}})
    assert (await counters.admit(KEY, "01", 3, False)).admitted


async def test_dirty_keys_are_tracked(counters: CounterStore) -> None:
    await counters.admit(KEY, "01", None, False)
    await counters.add({("t2", "2026-11"): {"rejected": 1}})
    assert counters.drain_dirty() == {KEY, ("t2", "2026-11")}
    assert counters.drain_dirty() == set()
    counters.mark_dirty([KEY])
    assert counters.drain_dirty() == {KEY}


async def test_routes_beyond_the_cap_share_one_bucket(counters: CounterStore) -> None:
    """Calls on ever new paths (which an app's mount could turn into ever new route fields)
    cannot grow a tenant's usage hash past ``MAX_ROUTES`` routes: further routes count
    together, by status class, and no call is lost."""
    await counters.add({KEY: {f"route|2xx|GET /r{i}": 1 for i in range(MAX_ROUTES - 10)}})
    more = {f"route|2xx|GET /s{i}": 1 for i in range(100)}
    await counters.add({KEY: {**more, "route|4xx|GET /s0": 2, "route|2xx|GET /r0": 1}})
    await counters.add({KEY: {"route|2xx|GET /s5": 1, "route|2xx|GET /s99": 1}})
    tallies = await counters.read(KEY)
    routes = {field: n for field, n in tallies.items() if field.startswith("route|")}
    assert len(routes) == MAX_ROUTES + 2  # and the two buckets
    assert routes["route|2xx|GET /s9"] == 1 and "route|2xx|GET /s10" not in routes
    assert routes["route|2xx|GET /r0"] == 2 and routes["route|2xx|GET /s5"] == 2
    assert routes["route|2xx|(other routes)"] == 90 + 1
    assert routes["route|4xx|(other routes)"] == 2
    assert sum(routes.values()) == (MAX_ROUTES - 10) + 103 + 2


# -- hostile values and partial failures (issue 17) ------------------------------------------

BIG = 9_223_372_036_854_775_807  # the largest value a Redis integer holds
OTHER = ("tenant_b", "2026-11")


async def test_out_of_range_amounts_never_reach_a_counter(counters: CounterStore) -> None:
    await counters.add({KEY: {"calls": BIG, "refunded": -5, "rejected": 1}, OTHER: {"calls": 2}})
    assert await counters.read(KEY) == {"rejected": 1, "hydrated": 1}
    assert (await counters.read(OTHER))["calls"] == 2
    await counters.add({KEY: {"rejected": 10**15}})  # within the bound, but past it once added
    assert (await counters.read(KEY))["rejected"] == 1


async def test_restored_values_are_bounded(counters: CounterStore, ledger: FakeLedger) -> None:
    """A ledger row no counter could hold (written by an old import, say) is left out."""
    ledger.rows[KEY] = {"calls": 5, "refunded": 1_000_000_000, "route|2xx|GET /a": BIG, "day:01": 5}
    decision = await counters.admit(KEY, "01", 6, False)
    assert decision.admitted and decision.used == 6  # the refunds cannot lift the quota
    assert not (await counters.admit(KEY, "01", 6, False)).admitted
    tallies = await counters.read(KEY)
    assert "refunded" not in tallies and "route|2xx|GET /a" not in tallies


@pytest.fixture(params=["real", "cluster"])
async def redis_counters(
    request: pytest.FixtureRequest, ledger: FakeLedger
) -> AsyncIterator[RedisCounters]:
    store = make_counters(request.param, request, ledger)
    assert isinstance(store, RedisCounters)
    yield store
    await store.close()


def _on_cluster(request: pytest.FixtureRequest) -> bool:
    callspec = getattr(request.node, "callspec", None)
    return callspec is not None and callspec.params.get("redis_counters") == "cluster"


def _raw(request: pytest.FixtureRequest) -> aioredis.Redis | RedisCluster:
    """A plain client on the Redis the test's counters use, to write behind their back."""
    if _on_cluster(request):
        first = request.getfixturevalue("cluster_url").split("//")[1].split(",")[0]
        return RedisCluster.from_url(f"redis://{first}")
    return aioredis.Redis.from_url(request.getfixturevalue("redis_url"))


def _name(request: pytest.FixtureRequest, key: tuple[str, str]) -> str:
    prefix = request.getfixturevalue("cluster_prefix" if _on_cluster(request) else "redis_prefix")
    return f"{prefix}usage:{{{key[0]}}}:{key[1]}"


async def test_one_refused_increment_fails_only_itself(
    redis_counters: RedisCounters, request: pytest.FixtureRequest, ledger: FakeLedger
) -> None:
    """Fields a hostile import (or anything else) left in a hash: one at the top of the
    integer range, one that is not a number. The shared batch applies everything else, once,
    and the breaker (which counts lost connections only) stays closed. The corrupt hash is set
    aside, restored from the ledger, and gets its increments with the next batch."""
    ledger.rows[KEY] = {"rejected": 10}
    raw = _raw(request)
    try:
        await raw.hset(
            _name(request, KEY),
            mapping={"hydrated": 1, "route|2xx|GET /x": BIG, "rday:01": "not a number"},
        )
        for _ in range(5):  # more than the breaker's threshold of failures
            await redis_counters.add(
                {
                    KEY: {"route|2xx|GET /x": 1, "rday:01": 1, "rejected": 1},
                    OTHER: {"route|2xx|GET /y": 1},
                }
            )
        assert redis_counters.breaker.state is BreakerState.CLOSED
        assert (await redis_counters.read(OTHER))["route|2xx|GET /y"] == 5
        tallies = await redis_counters.read(KEY)
        assert tallies["rejected"] == 10 + 5
        assert tallies["route|2xx|GET /x"] == 5 and tallies["rday:01"] == 5
        aside = await raw.hget(_name(request, KEY) + ":set-aside", "route|2xx|GET /x")
        assert aside == str(BIG).encode()
    finally:
        await raw.aclose()


async def test_a_sum_past_the_bound_is_dropped_alone(
    redis_counters: RedisCounters, request: pytest.FixtureRequest
) -> None:
    raw = _raw(request)
    try:
        await raw.hset(_name(request, KEY), mapping={"hydrated": 1, "rejected": 10**15})
        await redis_counters.add({KEY: {"rejected": 1, "rday:01": 1}, OTHER: {"rejected": 1}})
        assert (await redis_counters.read(KEY)) == {
            "hydrated": 1, "rejected": 10**15, "rday:01": 1
        }  # fmt: skip
        assert (await redis_counters.read(OTHER))["rejected"] == 1
    finally:
        await raw.aclose()


async def test_refunds_never_pass_calls(counters: CounterStore) -> None:
    """A refund is of an admitted call: one without its call would lift the quota."""
    await counters.add({KEY: {"refunded": 1}})
    await counters.add({KEY: {"calls": 2, "refunded": 2}})  # in one batch: the calls first
    await counters.add({KEY: {"refunded": 1}})
    tallies = await counters.read(KEY)
    assert tallies["calls"] == 2 and tallies["refunded"] == 2


POISONS: list[tuple[str, dict[str, object]]] = [
    ("calls at the top of the range", {"hydrated": 1, "calls": BIG}),
    ("calls not a number", {"hydrated": 1, "calls": "abc"}),
    ("a day tally not a number", {"hydrated": 1, "calls": 1, "day:10": "x"}),
    ("refunds above calls", {"hydrated": 1, "calls": 3, "refunded": 1_000_000_000}),
    ("a refusal tally at the top", {"hydrated": 1, "calls": 1, "rejected": BIG}),
]


@pytest.mark.parametrize("poison", [fields for _, fields in POISONS], ids=[n for n, _ in POISONS])
async def test_a_corrupt_hash_fails_no_other_decision(
    redis_counters: RedisCounters,
    request: pytest.FixtureRequest,
    poison: dict[str, object],
    ledger: FakeLedger,
) -> None:
    """Decisions of one turn share one script call: a hash it cannot use is set aside and
    restored from the ledger; the other tenants' decisions in the same call are taken."""
    ledger.rows[KEY] = {"calls": 4, "day:10": 4}
    raw = _raw(request)
    try:
        await raw.hset(_name(request, KEY), mapping=poison)  # type: ignore[arg-type]
        for _ in range(4):  # more than the breaker's threshold
            results = await asyncio.gather(
                *(redis_counters.admit(key, "10", 1000, False) for key in (OTHER, KEY) * 3),
                return_exceptions=True,
            )
            assert not [r for r in results if isinstance(r, BaseException)], results
        assert redis_counters.breaker.state is BreakerState.CLOSED
        assert (await redis_counters.read(OTHER))["calls"] == 12
        tallies = await redis_counters.read(KEY)
        assert tallies["calls"] == 4 + 12 and tallies["day:10"] == 4 + 12  # the ledger's 4
        assert "refunded" not in tallies and "rejected" not in tallies
        assert await raw.exists(_name(request, KEY) + ":set-aside")  # kept for a look
    finally:
        await raw.aclose()


async def test_a_corrupt_bucket_of_other_routes_fails_no_other_entry(
    redis_counters: RedisCounters, request: pytest.FixtureRequest, ledger: FakeLedger
) -> None:
    """A full hash whose bucket of other routes holds no tally: the route folded into it is
    checked first, so the hash is set aside (not the shared batch failed by Redis)."""
    ledger.rows[KEY] = {"route|2xx|GET /a": 1}
    raw = _raw(request)
    try:
        fields: dict[str | bytes, str | int] = {"hydrated": 1}
        fields.update((f"route|2xx|GET /r{i}", 1) for i in range(MAX_ROUTES))
        fields["route|2xx|(other routes)"] = "not a number"
        await raw.hset(_name(request, KEY), mapping=fields)  # type: ignore[arg-type]
        await redis_counters.add({KEY: {"route|2xx|GET /new": 1}, OTHER: {"rejected": 1}})
        assert (await redis_counters.read(OTHER))["rejected"] == 1
        await redis_counters.add({})  # what the set-aside hash did not take
        tallies = await redis_counters.read(KEY)
        assert tallies["route|2xx|GET /a"] == 1 and tallies["route|2xx|GET /new"] == 1
    finally:
        await raw.aclose()


async def test_a_key_of_another_type_fails_no_other_entry(
    redis_counters: RedisCounters, request: pytest.FixtureRequest
) -> None:
    raw = _raw(request)
    try:
        await raw.set(_name(request, KEY), "not a hash")
        await redis_counters.add({KEY: {"rejected": 1}, OTHER: {"rejected": 1}})
        decisions = await asyncio.gather(
            redis_counters.admit(KEY, "01", None, False),
            redis_counters.admit(OTHER, "01", None, False),
        )
        assert [d.used for d in decisions] == [1, 1]
        assert (await redis_counters.read(OTHER))["rejected"] == 1
        assert (await redis_counters.snapshots([KEY, OTHER]))[OTHER]["calls"] == 1
        assert redis_counters.breaker.state is BreakerState.CLOSED
    finally:
        await raw.aclose()


async def test_a_batch_whose_reply_was_lost_is_applied_once(
    redis_url: str, redis_prefix: str, ledger: FakeLedger
) -> None:
    """Redis applied the flush, the answer never came back: sending it again must not count
    it twice (nor may redis-py's own retry of the command). The proxy proves the answer was
    lost, and the flush that lost it failed."""
    proxy = await proxy_to(redis_url)
    counters = RedisCounters(
        through(redis_url, proxy), key_prefix=redis_prefix, hydrate_from=ledger.read
    )
    recorder = UsageRecorder(counters)
    try:
        await counters.read(KEY)  # restored: the next flush is one write
        recorder.rejected(KEY, "01", "lostreply")
        recorder.rejected(OTHER, "01", "burst")
        proxy.lose_reply_once(b"rejected:lostreply")
        with pytest.raises(StoreUnavailable):
            await recorder.flush()
        assert proxy.replies_lost == 1  # Redis answered; the answer was thrown away
        await recorder.flush()  # whatever is still owed goes again
        recorder.rejected(KEY, "01", "burst")
        await recorder.flush()
        tallies = await counters.read(KEY)
        assert tallies["rejected:lostreply"] == 1 and tallies["rejected"] == 2
        assert (await counters.read(OTHER))["rejected"] == 1
    finally:
        await counters.close()
        await proxy.stop()


async def test_a_set_aside_hash_keeps_its_increments_when_the_reply_was_lost(
    redis_url: str, redis_prefix: str, request: pytest.FixtureRequest, ledger: FakeLedger
) -> None:
    """A flush finds a hash it cannot add to, sets it aside, and reports that the hash's
    increments are still owed; that report is lost with the reply. The flush sent again must
    get the same report (not a bare "applied before"), or the increments are never added."""
    ledger.rows[KEY] = {"rejected": 10}
    proxy = await proxy_to(redis_url)
    counters = RedisCounters(
        through(redis_url, proxy), key_prefix=redis_prefix, hydrate_from=ledger.read
    )
    recorder = UsageRecorder(counters)
    raw = _raw(request)
    try:
        await counters.read(KEY)
        await raw.hset(_name(request, KEY), "rday:01", "not a number")
        recorder.rejected(KEY, "01", "lostreply")
        proxy.lose_reply_once(b"rejected:lostreply")
        with pytest.raises(StoreUnavailable):
            await recorder.flush()
        assert proxy.replies_lost == 1
        assert await raw.exists(_name(request, KEY) + ":set-aside")  # the first run did it
        await recorder.flush()  # the batch again, then what the set-aside hash still owes
        tallies = await counters.read(KEY)
        assert tallies["rejected"] == 10 + 1 and tallies["rejected:lostreply"] == 1
        assert tallies["rday:01"] == 1
    finally:
        await raw.aclose()
        await counters.close()
        await proxy.stop()
