"""Changes reach every worker process through Redis pub/sub (SPEC §3; the latency, which the
SPEC bounds at one second, is measured by benchmarks/propagation.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from benchmarks.launch import Server
from tenant_gateway import TenantGateway
from tenant_gateway.redis.invalidation import RedisInvalidator

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, auth, operator_headers, register

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
    """Each worker would trust its cached key for an hour: only the published invalidation
    can make both refuse it."""
    server = Server("--workers", "2", "--key-cache-ttl", "3600", *real_stores)
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
