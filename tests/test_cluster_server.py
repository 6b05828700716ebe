"""The product on a Redis Cluster over real HTTP: two ``tenant-gateway serve`` processes sharing
PostgreSQL and a 3-primary cluster, tenants spread over every primary."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest

from benchmarks.launch import Server, log_problems

from .conftest import auth

pytestmark = pytest.mark.slow

T = "/api/v1/tenants"
DRILL_PLANS = (
    '{"plans": {"drill": {"max_users": null, "monthly_calls": 5,'
    ' "burst_per_second": null, "price_cents": 0}}}'
)
FIELDS = ("calls", "route|2xx|GET /api/v1/projects")


async def until_in_the_ledger(postgres_url: str, tenant_ids: list[str]) -> None:
    """Until the ledger holds, for each tenant, the 5 calls and the 5 answers of its route
    (each process adds the answers it served), or fail after 30 s."""
    expected = {(tenant_id, field): 5 for tenant_id in tenant_ids for field in FIELDS}
    connection = await asyncpg.connect(postgres_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = await connection.fetch(
                "SELECT tenant_id, field, value FROM tg_usage"
                " WHERE tenant_id = ANY($1) AND field = ANY($2)",
                tenant_ids,
                list(FIELDS),
            )
            found = {(row["tenant_id"], row["field"]): row["value"] for row in rows}
            if found == expected:
                return
            assert time.monotonic() < deadline, f"the ledger holds {len(found)} of {len(expected)}"
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


async def test_thirty_tenants_exact_through_two_gateways_on_a_cluster(
    postgres_url: str, cluster_url: str, cluster_prefix: str, tmp_path: Path
) -> None:
    """30 tenants × 12 concurrent calls on a 5-call plan, half through each process: each
    tenant gets exactly 5 × 200 and 7 × 429, no 5xx, and its usage says so. The background
    flush works (it failed every second on a cluster before): both processes' route tallies
    reach the counters, slot by slot, and the ledger."""
    plans = tmp_path / "plans.json"
    plans.write_text(DRILL_PLANS)
    stores = (
        "--database-url", postgres_url,
        "--redis-url", cluster_url,
        "--redis-key-prefix", cluster_prefix,
        "--plans", str(plans),
        "--signup-rate", "unlimited",
    )  # fmt: skip
    servers = [Server(*stores), Server(*stores)]
    try:
        for server in servers:
            server.wait_ready()
        limits = httpx.Limits(max_connections=64)
        async with (
            httpx.AsyncClient(base_url=servers[0].base, timeout=30, limits=limits) as first,
            httpx.AsyncClient(base_url=servers[1].base, timeout=30, limits=limits) as second,
        ):
            tenants = []
            for n in range(30):
                body = {"name": f"T{n}", "plan": "drill", "admin_email": f"t{n}@example.com"}
                registered = await first.post(f"{T}/register", json=body)
                assert registered.status_code == 201, registered.text
                tenants.append(registered.json())
            for ready in (await first.get("/readyz"), await second.get("/readyz")):
                assert ready.status_code == 200, ready.text

            async def call(client: httpx.AsyncClient, tenant: dict[str, str]) -> tuple[str, int]:
                response = await client.get("/api/v1/projects", headers=auth(tenant))
                return tenant["id"], response.status_code

            calls = [
                call(first if n % 2 else second, tenant) for tenant in tenants for n in range(12)
            ]
            answers = await asyncio.gather(*calls)
            assert not [status for _, status in answers if status >= 500]
            by_tenant = {tenant["id"]: Counter[int]() for tenant in tenants}
            for tenant_id, status in answers:
                by_tenant[tenant_id][status] += 1
            assert all(seen == {200: 5, 429: 7} for seen in by_tenant.values()), by_tenant
            for n, tenant in enumerate(tenants):
                client = (first, second)[n % 2]
                usage = await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))
                assert usage.status_code == 200, usage.text
                assert (usage.json()["api_calls"], usage.json()["rejected_calls"]) == (5, 7)
        await until_in_the_ledger(postgres_url, [tenant["id"] for tenant in tenants])
    finally:
        logs = [server.stop() for server in servers]
    for log in logs:
        assert not log_problems(log), log
        assert "postponed" not in log and "failed" not in log, log
