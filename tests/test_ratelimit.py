"""The burst limit: the in-process sliding window by an injected clock, and the shared window
on the real Redis through ``limits``."""

from __future__ import annotations

import asyncio
import uuid

from tenant_gateway.ratelimit import BurstLimiter

from .conftest import FakeClock


def allowed(limiter: BurstLimiter, calls: int, rate: int = 10, tenant: str = "t") -> int:
    decisions = [limiter.acquire_now(tenant, rate) for _ in range(calls)]
    assert all(decision is not None for decision in decisions)
    return sum(decision.allowed for decision in decisions if decision is not None)


def test_a_full_second_refuses_and_says_when_to_retry() -> None:
    clock = FakeClock()
    clock.now = 1_000.0
    limiter = BurstLimiter("async+memory://", clock)
    remaining = [limiter.acquire_now("t", 10) for _ in range(10)]
    assert [d.remaining for d in remaining if d is not None] == list(range(9, -1, -1))
    refused = limiter.acquire_now("t", 10)
    assert refused is not None and not refused.allowed and refused.retry_after == 1


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
        limiter.acquire_now(f"new{n}", 10)
    assert len(limiter) == 9_999  # of 10,000 windows "idle" went; "busy" and the new stay
    assert allowed(limiter, 1, tenant="busy") == 0  # still full: its window was kept


async def test_a_shared_window_lives_in_redis(redis_url: str) -> None:
    """Two limiters (two processes) on one Redis share one window."""
    clock = FakeClock()
    uri = "async+" + redis_url
    first, second = BurstLimiter(uri, clock), BurstLimiter(uri, clock)
    tenant = f"tenant-{uuid.uuid4().hex}"
    assert first.acquire_now(tenant, 5) is None  # not decidable inline: shared
    decisions = await asyncio.gather(
        *(limiter.acquire(tenant, 5) for limiter in (first, second) for _ in range(4))
    )
    assert sum(decision.allowed for decision in decisions) == 5
    refused = [decision for decision in decisions if not decision.allowed]
    assert all(decision.retry_after >= 1 for decision in refused)
