"""The key cache: warm keys cost no store query; entries expire and are bounded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tenant_gateway.exceptions import Problem
from tenant_gateway.keys import generate_api_key, hash_api_key, key_display_prefix
from tenant_gateway.models import ApiKeyRecord, Role, Tenant, TenantStatus, User
from tenant_gateway.resolver import KeyResolver

from .conftest import FakeClock
from .test_keys import CountingDirectory


async def add_tenant(
    directory: CountingDirectory, *, expires_at: datetime | None = None
) -> tuple[str, Tenant]:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    tenant = Tenant(
        f"tenant_{generate_api_key()[3:11]}", "T", "free", TenantStatus.ACTIVE, None, "a@t.io", now
    )
    secret = generate_api_key()
    key = ApiKeyRecord(
        "key_1",
        tenant.id,
        hash_api_key(secret),
        key_display_prefix(secret),
        None,
        Role.ADMIN,
        now,
        expires_at,
    )
    await directory.register(tenant, User("usr_1", tenant.id, "a@t.io", Role.ADMIN, now), key)
    return secret, tenant


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
    with pytest.raises(Problem) as refused:
        await resolver.resolve(secret)
    assert refused.value.code == "tenant_suspended"
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
    with pytest.raises(Problem) as refused:
        await resolver.resolve(secret)
    assert refused.value.code == "invalid_api_key"


async def test_unknown_keys_are_cached_as_misses_and_the_cache_is_bounded() -> None:
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, max_entries=10)
    unknown = generate_api_key()
    for _ in range(5):
        with pytest.raises(Problem):
            await resolver.resolve(unknown)
    assert directory.lookups == 1
    for _ in range(50):
        with pytest.raises(Problem):
            await resolver.resolve(generate_api_key())
    assert len(resolver) == 10
