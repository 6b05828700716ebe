"""Changes reach every worker process through Redis pub/sub (docs/security.md, Propagation; the
latency, bounded at one second, is measured by benchmarks/propagation.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from benchmarks.launch import Server
from tenant_gateway import TenantGateway
from tenant_gateway.redis.invalidation import RedisInvalidator
from tenant_gateway.resolver import KeyResolver

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, auth, operator_headers, register
from .helpers import CountingDirectory, add_tenant, proxy_to, through
from .tcp_proxy import TcpProxy

T = "/api/v1/tenants"


async def until_status(client: httpx.AsyncClient, headers: dict[str, str], status: int) -> None:
    """Until ``GET /whoami`` answers ``status``; a change that never arrives fails after 30 s.
    The tests freeze or lengthen the cache's lifetime, so only the published invalidation can
    bring the change: what they show is that it does, not how fast (a loaded machine is slow;
    the latency is measured by benchmarks/propagation.py)."""
    started = time.monotonic()
    while time.monotonic() - started < 30:
        if (await client.get("/whoami", headers=headers)).status_code == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not {status} after 30 s")


async def test_pubsub_invalidates_another_process_cache(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """Two gateways on the same stores; the clock is frozen, so the cache TTL never expires:
    only the published invalidation can make the second gateway notice."""
    clock = FakeClock()
    kwargs: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "redis_key_prefix": redis_prefix,
        "admin_jwt_secret": JWT_SECRET,
        "clock": clock,
    }
    first, second = TenantGateway(echo_app(), **kwargs), TenantGateway(echo_app(), **kwargs)
    a = await client_for(first)
    b = await client_for(second)
    invalidator = second.services.invalidator
    assert isinstance(invalidator, RedisInvalidator)
    await asyncio.wait_for(invalidator.ready.wait(), 5)

    tenant = await register(a)
    assert (await b.get("/whoami", headers=auth(tenant))).status_code == 200  # cached in B
    await a.post(f"{T}/{tenant['id']}/suspend", headers=operator_headers())
    await until_status(b, auth(tenant), 403)
    await a.post(f"{T}/{tenant['id']}/resume", headers=operator_headers())
    await until_status(b, auth(tenant), 200)
    await a.delete(f"{T}/{tenant['id']}", headers=auth(tenant))
    await until_status(b, auth(tenant), 401)


async def test_revocation_reaches_both_uvicorn_workers(real_stores: tuple[str, ...]) -> None:
    """With the default settings each worker, subscribed, trusts its cached key for a minute:
    only the published invalidation can make both refuse it within the 30 s allowed here."""
    server = Server("--workers", "2", *real_stores)
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base) as admin:
            tenant = (
                await admin.post(
                    f"{T}/register",
                    json={"name": "W", "plan": "enterprise", "admin_email": "w@w.io"},
                )
            ).json()
            key = (
                await admin.post(
                    f"{T}/{tenant['id']}/keys", json={"role": "developer"}, headers=auth(tenant)
                )
            ).json()

        async def fresh_connection_status() -> int:
            async with httpx.AsyncClient(base_url=server.base) as client:  # new connection each
                return (await client.get("/api/v1/projects", headers=auth(key))).status_code

        # warm the key in both workers: new connections are spread over the two processes
        assert set(await asyncio.gather(*(fresh_connection_status() for _ in range(40)))) == {200}
        async with httpx.AsyncClient(base_url=server.base) as admin:
            revoked = await admin.delete(
                f"{T}/{tenant['id']}/keys/{key['id']}", headers=auth(tenant)
            )
            assert revoked.status_code == 204
        revoked_at = time.monotonic()
        rounds = []
        while True:
            round_started = time.monotonic() - revoked_at
            statuses = await asyncio.gather(*(fresh_connection_status() for _ in range(40)))
            rounds.append((round(round_started, 3), statuses.count(200)))
            if set(statuses) == {401}:
                break
            assert round_started < 30, rounds
        print("revocation rounds (seconds after, 200s of 40):", rounds)  # pytest -s
    finally:
        log = server.stop()
    assert "Traceback" not in log
    assert log.count("Started server process") == 2


# -- the long TTL holds only while the subscription answers (issue 19) -----------------------


async def until_confirmed(resolver: KeyResolver, moment: float) -> None:
    """Until a heartbeat sent at ``moment`` (the injected clock's) or later has come back."""
    started = time.monotonic()
    while resolver.confirmed_at < moment:
        assert time.monotonic() - started < 10, "no heartbeat came back through Redis"
        await asyncio.sleep(0.01)


async def until(condition: Any, what: str) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < 10, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("outage", ["silent", "dropped"])
async def test_the_long_ttl_holds_only_while_the_subscription_answers(
    outage: str, redis_url: str, redis_prefix: str
) -> None:
    """A subscription through a proxy the test wedges (no byte passes, no error: only the
    heartbeats tell) or cuts (the connection drops, and every reconnection is refused). The
    clock only moves when the test moves it."""
    proxy = await proxy_to(redis_url)
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0, long_ttl=60.0)
    invalidator = RedisInvalidator(
        resolver, through(redis_url, proxy), channel=f"{redis_prefix}invalidate", clock=clock
    )
    listening = asyncio.create_task(invalidator.run())
    try:
        secret, _ = await add_tenant(directory)
        await until_confirmed(resolver, clock())
        await resolver.resolve(secret)
        clock.advance(30)
        await until_confirmed(resolver, clock())
        assert resolver.cached(secret) is not None and directory.lookups == 1  # 30 s: still warm

        await take_away(proxy, outage, invalidator)  # confirmations stop at the clock's now
        clock.advance(0.7)
        assert resolver.cached(secret) is not None  # within the short TTL of the outage's start
        clock.advance(0.31)
        assert resolver.cached(secret) is None  # past it: the short TTL applies again
        await resolver.resolve(secret)
        clock.advance(1.01)
        assert resolver.cached(secret) is None  # and to what is loaded during the outage
        assert directory.lookups == 2

        proxy.blackhole = False
        proxy.stall(False)
        await until_confirmed(resolver, clock())
        if outage == "dropped":
            assert len(resolver) == 0  # resubscribed: what it may have missed is forgotten
        await resolver.resolve(secret)
        clock.advance(30)
        await until_confirmed(resolver, clock())
        assert resolver.cached(secret) is not None  # back to the long TTL
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await invalidator.close()
        await proxy.stop()


async def take_away(proxy: TcpProxy, outage: str, invalidator: RedisInvalidator) -> None:
    if outage == "silent":
        proxy.stall()
        return
    proxy.blackhole = True
    proxy.cut()
    await until(lambda: not invalidator.ready.is_set(), "the lost subscription went unnoticed")


@pytest.mark.parametrize("stores", ["memory", "postgres", "postgres+redis"])
async def test_the_long_ttl_applies_only_where_every_change_is_heard(
    stores: str, postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """A directory in this process's memory changes only here; one in PostgreSQL may be changed
    by other processes, heard through Redis alone."""
    clock = FakeClock()
    gateway = TenantGateway(
        echo_app(),
        database_url=None if stores == "memory" else postgres_url,
        redis_url=redis_url if stores == "postgres+redis" else None,
        redis_key_prefix=redis_prefix,
        clock=clock,
    )
    client = await client_for(gateway)
    tenant = await register(client)
    resolver = gateway.services.resolver
    if stores == "postgres+redis":
        await until_confirmed(resolver, clock())
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    clock.advance(30)
    if stores == "postgres+redis":
        await until_confirmed(resolver, clock())
    warm = resolver.cached(tenant["api_key"]) is not None
    assert warm == (stores != "postgres")


async def test_a_subscription_cut_and_restored_at_once_still_empties_the_cache(
    redis_url: str, redis_prefix: str
) -> None:
    """Redis answers again straight away: reconnecting is easy, but what was published in
    between is lost, so the cache must start afresh (redis-py left to itself would resubscribe
    quietly)."""
    proxy = await proxy_to(redis_url)
    directory, clock = CountingDirectory(), FakeClock()
    resolver = KeyResolver(directory, clock, ttl=1.0, long_ttl=60.0)
    invalidator = RedisInvalidator(
        resolver, through(redis_url, proxy), channel=f"{redis_prefix}invalidate", clock=clock
    )
    listening = asyncio.create_task(invalidator.run())
    try:
        secret, _ = await add_tenant(directory)
        await until_confirmed(resolver, clock())
        await resolver.resolve(secret)
        proxy.cut()
        await until(lambda: len(resolver) == 0, "the cut went unnoticed: the cache was kept")
        await until_confirmed(resolver, clock())
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await invalidator.close()
        await proxy.stop()
