"""The burst limit: the in-process sliding window by an injected clock, and the shared window
on the real Redis through ``limits``."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from tenant_gateway.exceptions import BurstRefused
from tenant_gateway.ratelimit import BurstLimiter

from .conftest import FakeClock


def allowed(limiter: BurstLimiter, calls: int, rate: int = 10, tenant: str = "t") -> int:
    taken = 0
    for _ in range(calls):
        try:
            limiter.take(tenant, rate)
        except BurstRefused:
            continue
        taken += 1
    return taken


def test_a_full_second_refuses_and_says_when_to_retry() -> None:
    clock = FakeClock()
    clock.now = 1_000.0
    limiter = BurstLimiter("async+memory://", clock)
    assert not limiter.shared
    assert [limiter.take("t", 10) for _ in range(10)] == list(range(9, -1, -1))
    with pytest.raises(BurstRefused) as refused:
        limiter.take("t", 10)
    assert refused.value.retry_after == 1


def test_the_window_slides_over_the_previous_second() -> None:
    clock = FakeClock()
    clock.now = 1_000.0
    limiter = BurstLimiter("async+memory://", clock)
    assert allowed(limiter, 12) == 10
    clock.now = 1_001.5  # half of the previous second still counts: 10 × 0.5
    assert allowed(limiter, 12) == 5
    clock.now = 1_001.85  # 10 × 0.15 + the 5 of this second = 6.5: room for 3 more
    assert allowed(limiter, 12) == 3
    clock.now = 1_003.0  # two seconds on: nothing left of either
    assert allowed(limiter, 12) == 10


def test_tenants_have_their_own_windows_and_idle_ones_are_forgotten() -> None:
    clock = FakeClock()
    clock.now = 1_000.0
    limiter = BurstLimiter("async+memory://", clock)
    assert allowed(limiter, 10, tenant="idle") == 10
    clock.now = 1_010.0
    assert allowed(limiter, 10, tenant="busy") == 10
    for n in range(9_998):  # the 10,000th new window triggers a sweep of idle ones
        limiter.take(f"new{n}", 10)
    assert len(limiter) == 9_999  # of 10,000 windows "idle" went; "busy" and the new stay
    assert allowed(limiter, 1, tenant="busy") == 0  # still full: its window was kept


async def test_a_shared_window_lives_in_redis(redis_url: str) -> None:
    """Two limiters (two processes) on one Redis share one window."""
    clock = FakeClock(datetime(2020, 1, 1, tzinfo=UTC))  # limits itself keeps the wall clock
    uri = "async+" + redis_url
    first, second = BurstLimiter(uri, clock), BurstLimiter(uri, clock)
    tenant = f"tenant-{uuid.uuid4().hex}"
    assert first.shared and second.shared  # not decidable inline
    answers = await asyncio.gather(
        *(limiter.acquire(tenant, 5) for limiter in (first, second) for _ in range(4)),
        return_exceptions=True,
    )
    left = [answer for answer in answers if isinstance(answer, int)]
    assert len(left) == 5  # the stats are read after the hit: concurrent calls see lower counts
    assert all(0 <= slots <= 4 for slots in left)
    refused = [answer for answer in answers if not isinstance(answer, int)]
    assert len(refused) == 3
    assert all(isinstance(r, BurstRefused) and r.retry_after == 1 for r in refused)
