"""The counter stores, memory and Redis, through the same cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tenant_gateway.quota import CounterStore, MemoryCounters, RedisCounters

from .conftest import BACKENDS


@pytest.fixture(params=BACKENDS)
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[CounterStore]:
    store: CounterStore
    if request.param == "memory":
        store = MemoryCounters()
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisCounters(url, key_prefix=request.getfixturevalue("redis_prefix"))
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


async def test_reject_and_add_tallies(counters: CounterStore) -> None:
    await counters.reject(KEY, "02", "burst")
    await counters.add({KEY: {"route|2xx|GET /x": 2}, ("t2", "2026-11"): {"route|5xx|GET /y": 1}})
    tallies = await counters.read(KEY)
    assert tallies["rejected"] == 1 and tallies["rejected:burst"] == 1 and tallies["rday:02"] == 1
    assert tallies["route|2xx|GET /x"] == 2
    assert (await counters.read(("t2", "2026-11"))) == {"route|5xx|GET /y": 1}
    assert await counters.read(("nobody", "2026-11")) == {}
