"""The counter stores, memory and Redis, through the same cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tenant_gateway.quota import CounterStore, MemoryCounters, RedisCounters

from .conftest import BACKENDS

LEDGER: dict[tuple[str, str], dict[str, int]] = {}
RESTORES: list[tuple[str, str]] = []


async def restore(key: tuple[str, str]) -> dict[str, int]:
    """The hydration source: what a ledger would answer for ``key``."""
    RESTORES.append(key)
    return LEDGER.get(key, {})


def make_counters(kind: str, request: pytest.FixtureRequest) -> CounterStore:
    if kind == "memory":
        return MemoryCounters(hydrate_from=restore)
    url = request.getfixturevalue("redis_url")
    return RedisCounters(
        url, key_prefix=request.getfixturevalue("redis_prefix"), hydrate_from=restore
    )


@pytest.fixture(params=BACKENDS)
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[CounterStore]:
    LEDGER.clear()
    RESTORES.clear()
    store = make_counters(request.param, request)
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


async def test_a_missing_hash_is_restored_once_before_deciding(counters: CounterStore) -> None:
    LEDGER[KEY] = {"calls": 95, "refunded": 2, "day:01": 95, "rejected": 4, "route|2xx|GET /a": 90}
    results = await asyncio.gather(*(counters.admit(KEY, "02", 100, False) for _ in range(20)))
    # 95 - 2 = 93 billable already: 7 more fit
    assert sum(r.admitted for r in results) == 7
    tallies = await counters.read(KEY)
    assert tallies["calls"] == 102 and tallies["rejected"] == 4 + 13
    assert tallies["route|2xx|GET /a"] == 90 and tallies["day:02"] == 7
    assert RESTORES.count(KEY) == 1  # 20 calls found it missing at once: one ledger read
    snapshot = await counters.snapshots([KEY, ("never", "2026-11")])
    assert list(snapshot) == [KEY]


async def test_a_tally_added_to_a_lost_hash_restores_it_first(counters: CounterStore) -> None:
    LEDGER[KEY] = {"route|2xx|GET /a": 10, "calls": 10}
    await counters.add({KEY: {"route|2xx|GET /a": 1}})  # lands before any decision
    snapshot = await counters.snapshots([KEY])
    assert snapshot[KEY]["route|2xx|GET /a"] == 11 and snapshot[KEY]["calls"] == 10
    decision = await counters.admit(KEY, "01", None, False)
    assert decision.used == 11
    assert RESTORES.count(KEY) == 1


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
