"""The failover drills, under load, through a real ``tenant-gateway serve`` on
PostgreSQL and Redis servers started here (``tests/sentinels.py``).

Each prints its figures (``pytest -s``): docs/scaling.md quotes them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from benchmarks.launch import Server
from benchmarks.load import Load, Request
from tenant_gateway import TenantGateway

from .apps import echo_app
from .sentinels import RedisProcess, SentinelGroup

pytestmark = pytest.mark.slow

PLANS = (
    '{"plans": {"metered": {"max_users": null, "monthly_calls": 100000000,'
    ' "burst_per_second": null, "price_cents": 0}}}'
)
CONNECTIONS = 16
FLUSH_INTERVAL = 1.0


@asynccontextmanager
async def gateway(
    tmp_path: Path, postgres_url: str, redis_url: str, prefix: str
) -> AsyncIterator[Server]:
    plans = tmp_path / "plans.json"
    plans.write_text(PLANS)
    server = Server(
        "--database-url", postgres_url,
        "--redis-url", redis_url,
        "--redis-key-prefix", prefix,
        "--plans", str(plans),
        "--flush-interval", str(FLUSH_INTERVAL),
    )  # fmt: skip
    try:
        await asyncio.to_thread(server.wait_ready)
        yield server
    finally:
        log = await asyncio.to_thread(server.stop)
        assert "Traceback" not in log, log[-5000:]


async def metered_tenant(server: Server) -> tuple[str, dict[str, str]]:
    async with httpx.AsyncClient(base_url=server.base) as client:
        body = {"name": "Drill", "plan": "metered", "admin_email": "drill@example.com"}
        tenant = (await client.post("/api/v1/tenants/register", json=body)).json()
    return tenant["id"], {"Authorization": f"Bearer {tenant['api_key']}"}


async def usage(server: Server, tenant_id: str, headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(base_url=server.base) as client:
        response = await client.get(f"/api/v1/tenants/{tenant_id}/usage", headers=headers)
    assert response.status_code == 200, response.text
    calls: int = response.json()["api_calls"]
    return calls


async def ledger_calls(postgres_url: str, tenant_id: str) -> int:
    conn = await asyncpg.connect(postgres_url)
    try:
        value = await conn.fetchval(
            "SELECT sum(value) FROM tg_usage WHERE tenant_id = $1 AND field = 'calls'", tenant_id
        )
    finally:
        await conn.close()
    return int(value or 0)


async def until(what: str, condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.02)


def first_ok_sent_after(load: Load, moment: float) -> float | None:
    """When the first request sent after ``moment`` that was answered 200 was sent."""
    sent = [
        at
        for at, status in zip(load.sent, load.statuses, strict=True)
        if at > moment and status == 200
    ]
    return min(sent, default=None)


def successes(load: Load) -> int:
    return sum(1 for status in load.statuses if status == 200)


async def test_sentinel_drill_kill_the_primary_then_bring_it_back_empty(
    sentinel_group: SentinelGroup, postgres_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Calls are 200 again within 15 s of SIGKILL to the primary; the old primary comes back
    empty and is made a replica; usage is at least 99 % of the 200s clients saw and never
    more than those plus the calls in flight."""
    async with gateway(tmp_path, postgres_url, sentinel_group.url, redis_prefix) as server:
        tenant_id, headers = await metered_tenant(server)
        load = Load(server.base, Request("GET", "/api/v1/projects", headers), CONNECTIONS)
        load.start()
        await load.until(500)
        old = sentinel_group.primary()
        killed_at = time.monotonic()
        old.kill()
        await until(
            "a 200 after the kill", lambda: first_ok_sent_after(load, killed_at) is not None, 30
        )
        back_at = first_ok_sent_after(load, killed_at) or killed_at
        await load.until(500)
        failed_after_kill = sum(
            1 for at, status in zip(load.sent, load.statuses, strict=True)
            if at > killed_at and status != 200
        )  # fmt: skip
        await asyncio.to_thread(lambda: old.start(port=old.port))  # empty: no persistence
        returned_at = time.monotonic()
        await asyncio.to_thread(lambda: sentinel_group.wait_for_replica(old, timeout=60))
        replica_after = time.monotonic() - returned_at
        await load.until(500)
        await load.stop()
        seen = successes(load)
        counted = await usage(server, tenant_id, headers)
    ledger = await ledger_calls(postgres_url, tenant_id)
    statuses = sorted(set(load.statuses))
    print(
        f"\nsentinel drill: {len(load.statuses)} calls over {CONNECTIONS} connections;"
        f" 200 again {back_at - killed_at:.2f} s after SIGKILL to the primary"
        f" ({failed_after_kill} answered 503 meanwhile); the old primary, back empty, a replica"
        f" {replica_after:.1f} s later; 200s seen {seen}, usage {counted}, ledger {ledger};"
        f" statuses {statuses}, errors {len(load.errors)}"
    )
    assert back_at - killed_at < 15
    assert set(load.statuses) <= {200, 503} and not load.errors
    assert seen * 0.99 <= counted <= seen + CONNECTIONS
    assert ledger == counted


async def test_redis_restarted_from_an_older_dump_loses_at_most_one_flush_interval(
    lone_redis: RedisProcess, postgres_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A plain ``redis://`` server saves a dump, takes calls for several flush intervals,
    crashes and restarts from the dump: the counter is raised to the ledger before its next
    decision, so it misses at most the calls of the last flush interval before the crash
    (without the check it would miss every call since the dump)."""
    async with gateway(tmp_path, postgres_url, lone_redis.url, redis_prefix) as server:
        tenant_id, headers = await metered_tenant(server)
        load = Load(server.base, Request("GET", "/api/v1/projects", headers), CONNECTIONS)
        load.start()
        await load.until(300)
        with lone_redis.client() as client:
            client.save()
        saved_at = time.monotonic()
        await load.until(300, seconds=saved_at - load.started_at + 4 * FLUSH_INTERVAL)
        killed_at = time.monotonic()
        lone_redis.kill()
        await asyncio.to_thread(lambda: lone_redis.start(port=lone_redis.port))
        await until(
            "a 200 after the restart", lambda: first_ok_sent_after(load, killed_at) is not None, 30
        )
        await load.until(300)
        await load.stop()
        seen = successes(load)
        counted = await usage(server, tenant_id, headers)
    ok_times = load.ok_times
    since_dump = sum(1 for at in ok_times if saved_at < at <= killed_at)
    last_interval = sum(1 for at in ok_times if killed_at - FLUSH_INTERVAL < at <= killed_at)
    lost = seen - counted
    print(
        f"\nrestart from an older dump: {since_dump} calls answered between the dump and the"
        f" crash; lost {lost} (200s seen {seen}, usage {counted}); one flush interval held"
        f" {last_interval} calls"
    )
    assert set(load.statuses) <= {200, 503}
    assert -CONNECTIONS <= lost <= 1.5 * last_interval + CONNECTIONS
    assert lost < since_dump / 2


async def test_the_issue_case_a_fixed_primary_url_repointed_by_hand(
    sentinel_group: SentinelGroup, postgres_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """The case issue 19 reported, with the primary's own ``redis://`` URL: the primary is
    killed, comes back empty, takes calls until Sentinel makes it a replica (they are lost
    with its data), and the gateway is then pointed at the new primary by hand. The counter
    there is raised to the ledger before its first use: it no longer stays short all month."""
    old = sentinel_group.primary()
    plans = tmp_path / "plans.json"
    plans.write_text(PLANS)
    fixed = TenantGateway(
        echo_app(),
        database_url=postgres_url,
        redis_url=old.url,
        redis_key_prefix=redis_prefix,
        plans=str(plans),
        usage_flush_interval=FLUSH_INTERVAL,
    )
    await fixed.startup()
    try:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fixed), base_url="http://testserver"
        )
        body = {"name": "Drill", "plan": "metered", "admin_email": "drill@example.com"}
        tenant = (await client.post("/api/v1/tenants/register", json=body)).json()
        headers = {"Authorization": f"Bearer {tenant['api_key']}"}
        # paced: an in-process load at full speed leaves the sentinels no CPU to judge by
        load = Load(client, Request("GET", "/whoami", headers), CONNECTIONS, rate=1000)
        load.start()
        await load.until(300)
        old.kill()
        new = await asyncio.to_thread(sentinel_group.wait_for_failover, old)
        at_restart = successes(load)
        await asyncio.to_thread(lambda: old.start(port=old.port))  # empty
        await asyncio.to_thread(lambda: sentinel_group.wait_for_replica(old, timeout=60))
        await load.until(100)  # refused now: the gateway's Redis is a replica
        await load.stop()
        await client.aclose()
    finally:
        await fixed.shutdown()
    seen = successes(load)
    ledger = await ledger_calls(postgres_url, tenant["id"])
    period = datetime.now(UTC).strftime("%Y-%m")
    with new.client() as raw:  # what the new primary holds: the calls replicated before the kill
        held = int(raw.hget(f"{redis_prefix}usage:{{{tenant['id']}}}:{period}", "calls") or 0)
    repointed = TenantGateway(
        echo_app(),
        database_url=postgres_url,
        redis_url=new.url,
        redis_key_prefix=redis_prefix,
        plans=str(plans),
    )
    await repointed.startup()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=repointed), base_url="http://testserver"
        ) as client:
            response = await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=headers)
            counted = response.json()["api_calls"]
    finally:
        await repointed.shutdown()
    print(
        f"\nrepointed by hand: 200s seen {seen} ({seen - at_restart} on the old primary back"
        f" empty, lost with it); ledger {ledger}; the new primary held {held}, usage there"
        f" {counted} once checked"
    )
    assert seen - at_restart > 0 and held < ledger  # the case happened
    assert counted >= ledger
    assert set(load.statuses) <= {200, 503}
