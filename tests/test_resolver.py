"""The key cache: warm keys cost no store query; entries expire and are bounded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tenant_gateway.directory import MemoryDirectory
from tenant_gateway.exceptions import InvalidApiKey, StoreUnavailable, TenantSuspended
from tenant_gateway.keys import generate_api_key
from tenant_gateway.models import TenantStatus
from tenant_gateway.resolver import KeyResolver

from .conftest import FakeClock
from .helpers import CountingDirectory, add_tenant


async def turns(count: int = 10) -> None:
    """Let the event loop run a few turns: a background reload (its lookup is sent at the end
    of the turn that asked for it) lands within them, no caller waiting for it."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_warm_key_costs_no_lookup_until_the_ttl_passes() -> None:
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0)
    secret, tenant = await add_tenant(directory)
    for _ in range(100):
        assert (await resolver.resolve(secret)).tenant.id == tenant.id
    assert directory.lookups == 1
    clock.advance(1.01)
    await resolver.resolve(secret)
    assert directory.lookups == 2


async def test_suspension_is_seen_after_eviction_or_ttl() -> None:
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0)
    secret, tenant = await add_tenant(directory)
    await resolver.resolve(secret)
    await directory.set_status(tenant.id, TenantStatus.SUSPENDED)
    await resolver.resolve(secret)  # still cached: another process would see this for ≤ 1 s
    clock.advance(1.01)
    with pytest.raises(TenantSuspended):
        await resolver.resolve(secret)
    await directory.set_status(tenant.id, TenantStatus.ACTIVE)
    resolver.forget_tenant(tenant.id)  # what the admin API does in its own process
    assert (await resolver.resolve(secret)).tenant.status is TenantStatus.ACTIVE


async def test_expired_key_is_invalid_by_the_injected_clock() -> None:
    directory = CountingDirectory()
    clock = FakeClock(datetime(2026, 11, 1, tzinfo=UTC))
    resolver = KeyResolver(directory, clock)
    secret, _ = await add_tenant(directory, expires_at=datetime(2026, 11, 1, 0, 0, 5, tzinfo=UTC))
    await resolver.resolve(secret)
    clock.advance(5)
    with pytest.raises(InvalidApiKey):
        await resolver.resolve(secret)


async def test_unknown_keys_are_cached_as_misses_and_the_cache_is_bounded() -> None:
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, max_entries=10)
    unknown = generate_api_key()
    for _ in range(5):
        with pytest.raises(InvalidApiKey):
            await resolver.resolve(unknown)
    assert directory.lookups == 1
    for _ in range(50):
        with pytest.raises(InvalidApiKey):
            await resolver.resolve(generate_api_key())
    assert len(resolver) == 10


class GatedDirectory(CountingDirectory):
    """Lookups wait until the test opens the gate: loads stay in flight as long as needed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def find_key(self, key_hash: bytes) -> Any:
        await self.gate.wait()
        return await super().find_key(key_hash)


async def test_concurrent_misses_share_one_lookup() -> None:
    directory, clock = GatedDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0)
    secret, tenant = await add_tenant(directory)
    directory.gate.clear()
    waiting = [asyncio.ensure_future(resolver.resolve(secret)) for _ in range(50)]
    await asyncio.sleep(0)
    directory.gate.set()
    assert {p.tenant.id for p in await asyncio.gather(*waiting)} == {tenant.id}
    assert directory.lookups == 1


async def test_a_key_in_use_is_refreshed_ahead_and_never_goes_cold() -> None:
    directory, clock = GatedDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0)
    secret, tenant = await add_tenant(directory)
    await resolver.resolve(secret)
    clock.advance(0.5)
    assert resolver.cached(secret) is not None and directory.lookups == 1  # early: no refresh
    clock.advance(0.3)  # in the last quarter of the entry's second: this use refreshes it
    directory.gate.clear()
    assert resolver.cached(secret) is not None
    assert resolver.cached(secret) is not None  # the refresh in flight is not started twice
    directory.gate.set()
    await turns()
    assert directory.lookups == 2
    clock.advance(0.5)  # past the first entry's expiry, within the refreshed one's
    principal = resolver.cached(secret)
    assert principal is not None and principal.tenant.id == tenant.id


async def test_a_refresh_never_serves_past_the_ttl() -> None:
    directory, clock = GatedDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0)
    secret, _ = await add_tenant(directory)
    await resolver.resolve(secret)
    clock.advance(0.9)
    directory.gate.clear()  # the refresh started now hangs
    assert resolver.cached(secret) is not None
    clock.advance(0.2)
    assert resolver.cached(secret) is None  # expired: the caller must wait for the load
    directory.gate.set()
    await resolver.resolve(secret)
    assert directory.lookups == 1 + 1  # the resolve joined the refresh already in flight


class SlowAnswerDirectory(GatedDirectory):
    """Reads at once, answers when the gate opens: the answer can be stale on arrival."""

    async def find_key(self, key_hash: bytes) -> Any:
        self.lookups += 1
        found = await MemoryDirectory.find_key(self, key_hash)
        await self.gate.wait()
        return found


async def test_a_load_that_overlaps_an_eviction_is_not_cached() -> None:
    directory, clock = SlowAnswerDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0)
    secret, tenant = await add_tenant(directory)
    directory.gate.clear()
    before = asyncio.ensure_future(resolver.resolve(secret))
    while directory.lookups == 0:  # until its load has read the directory
        await asyncio.sleep(0)
    await directory.set_status(tenant.id, TenantStatus.SUSPENDED)
    resolver.forget_tenant(tenant.id)  # what the admin API does after the change
    after = asyncio.ensure_future(resolver.resolve(secret))
    directory.gate.set()
    assert (await before).tenant.status is TenantStatus.ACTIVE  # it read before the change
    with pytest.raises(TenantSuspended):
        await after  # started after the eviction: a load of its own, which sees the change
    resolver.forget_tenant(tenant.id)
    directory.gate.clear()
    late = asyncio.ensure_future(resolver.resolve(secret))  # reads now, answers when let go
    while directory.lookups < 3:
        await asyncio.sleep(0)
    await directory.set_status(tenant.id, TenantStatus.ACTIVE)
    resolver.forget_tenant(tenant.id)
    directory.gate.set()
    with pytest.raises(TenantSuspended):
        await late  # answered with what it read: suspended
    assert resolver.cached(secret) is None  # but that answer, stale on arrival, was not cached
    assert (await resolver.resolve(secret)).tenant.status is TenantStatus.ACTIVE


class FlakyDirectory(GatedDirectory):
    """Lookups wait for the gate, then answer, or fail as an outage does while ``down``."""

    down = False

    async def find_key(self, key_hash: bytes) -> Any:
        self.lookups += 1
        await self.gate.wait()
        if self.down:
            raise StoreUnavailable("PostgreSQL", "postgresql://db", "down")
        return await MemoryDirectory.find_key(self, key_hash)


async def test_an_outage_does_not_bring_back_an_evicted_entry() -> None:
    directory, clock = FlakyDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0)
    secret, tenant = await add_tenant(directory)
    await resolver.resolve(secret)
    directory.down = True
    clock.advance(1.01)
    assert (await resolver.resolve(secret)).tenant.id == tenant.id  # an outage alone: stale serves
    clock.advance(1.01)
    directory.gate.clear()
    during = asyncio.ensure_future(resolver.resolve(secret))
    while directory.lookups < 3:
        await asyncio.sleep(0)
    resolver.forget_tenant(tenant.id)  # revoked meanwhile: what was cached may be stale
    directory.gate.set()
    with pytest.raises(StoreUnavailable):
        await during
    with pytest.raises(StoreUnavailable):
        await resolver.resolve(secret)  # nor cached again


# -- the long TTL, while every change is confirmed heard (issue 19) ---------------------------


async def test_a_confirmed_entry_lives_the_long_ttl_and_no_longer() -> None:
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0, long_ttl=60.0)
    secret, _ = await add_tenant(directory)
    await resolver.resolve(secret)
    for _ in range(59):  # the channel confirms every second, as its heartbeats do
        clock.advance(1.0)
        resolver.confirm(clock())
        assert resolver.cached(secret) is not None
    assert directory.lookups == 1
    clock.advance(1.0)
    resolver.confirm(clock())
    assert resolver.cached(secret) is None  # 60 s after its load, confirmed or not
    await resolver.resolve(secret)
    assert directory.lookups == 2


async def test_when_confirmations_stop_every_entry_has_the_short_ttl_left() -> None:
    """An entry trusted for a minute outlives the last confirmation by the short TTL at most,
    and one loaded after it lives the short TTL."""
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0, long_ttl=60.0)
    secret, _ = await add_tenant(directory)
    other, _ = await add_tenant(directory)
    await resolver.resolve(secret)
    clock.advance(30)
    last = clock()
    resolver.confirm(last)  # the last one: the subscription is lost after it
    clock.advance(0.7)  # (not yet in the last quarter second: no refresh ahead)
    assert resolver.cached(secret) is not None
    await resolver.resolve(other)  # loaded during the outage
    clock.advance(0.31)
    assert resolver.cached(secret) is None  # 1 s past the last confirmation, not 60 s past its load
    assert resolver.cached(other) is not None
    clock.advance(0.7)
    assert resolver.cached(other) is None  # 1 s past its load
    assert directory.lookups == 2
    resolver.confirm(last - 5)  # a late answer to an older heartbeat moves nothing back
    assert resolver.confirmed_at == last


async def test_unknown_keys_keep_the_short_ttl_when_confirmed() -> None:
    """No eviction ever names a miss: only its short TTL bounds it."""
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0, long_ttl=60.0)
    unknown = generate_api_key()
    with pytest.raises(InvalidApiKey):
        await resolver.resolve(unknown)
    clock.advance(1.01)
    resolver.confirm(clock())
    with pytest.raises(InvalidApiKey):
        await resolver.resolve(unknown)
    assert directory.lookups == 2


async def test_a_confirmed_key_in_use_is_refreshed_ahead_of_its_long_ttl_only() -> None:
    directory, clock = GatedDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0, long_ttl=60.0)
    secret, _ = await add_tenant(directory)
    await resolver.resolve(secret)
    for _ in range(597):  # a busy key, confirmed every 0.1 s: no reload
        clock.advance(0.1)
        resolver.confirm(clock())
        assert resolver.cached(secret) is not None
    assert directory.lookups == 1
    clock.advance(0.1)  # 0.2 s before its 60 s are up: this use reloads it in the background
    resolver.confirm(clock())
    assert resolver.cached(secret) is not None
    await turns()
    assert directory.lookups == 2
    clock.advance(0.5)
    resolver.confirm(clock())
    assert resolver.cached(secret) is not None  # the reloaded entry: never cold
