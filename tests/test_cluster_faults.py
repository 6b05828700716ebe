"""A Redis Cluster losing a primary (its process killed, as in a crash) and getting it back:
the other primaries' tenants are served throughout, the lost one's get 503 and are served again
when it returns, restored from the ledger. On a cluster of this module's own (it is broken on
purpose), with ``cluster-require-full-coverage no`` unless a test says otherwise."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.redis_cluster import LocalCluster
from tenant_gateway import TenantGateway
from tenant_gateway.breaker import BreakerState
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.redis.cluster_counters import ClusterCounters
from tenant_gateway.redis.slots import slot_of

from .apps import echo_app
from .conftest import FakeClock, auth, register
from .redis_cluster import started_cluster
from .test_redis_cluster import tenants_by_node

T = "/api/v1/tenants"
PLANS = {
    "plans": {
        "metered": {
            "max_users": None,
            "monthly_calls": 1000,
            "burst_per_second": None,
            "price_cents": 0,
        }
    }
}


@pytest.fixture(scope="module")
def fault_cluster() -> Iterator[LocalCluster]:
    with started_cluster() as cluster:
        yield cluster


async def registered_on_every_node(
    client: httpx.AsyncClient, cluster: LocalCluster, each: int
) -> dict[int, list[dict[str, Any]]]:
    """Tenants registered until every primary serves ``each`` of them (by their id's slot)."""
    found: dict[int, list[dict[str, Any]]] = {port: [] for port in cluster.ports}
    while min(map(len, found.values())) < each:
        tenant = await register(client, plan="metered")
        found[cluster.slot_owner(slot_of("{" + tenant["id"] + "}"))].append(tenant)
    return found


class Calls:
    """Calls to the wrapped app, each tenant's 200s counted."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.admitted: Counter[str] = Counter()

    async def __call__(self, tenants: list[dict[str, Any]]) -> set[int]:
        answers = await asyncio.gather(
            *(self.client.get("/whoami", headers=auth(tenant)) for tenant in tenants)
        )
        for tenant, answer in zip(tenants, answers, strict=True):
            self.admitted[tenant["id"]] += answer.status_code == 200
        return {answer.status_code for answer in answers}


async def api_calls(client: httpx.AsyncClient, tenant: dict[str, Any]) -> int:
    usage = await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))
    assert usage.status_code == 200, usage.text
    calls: int = usage.json()["api_calls"]
    return calls


async def test_a_dead_primary_fails_only_its_own_tenants(
    fault_cluster: LocalCluster, client_for: Any
) -> None:
    clock = FakeClock()
    gateway = TenantGateway(
        echo_app(),
        redis_url=fault_cluster.url,
        redis_key_prefix="tg-faults:",
        plans=PLANS,
        signup_rate=None,  # as many sign-ups as it takes to have tenants on every node
        clock=clock,
    )
    client = await client_for(gateway)
    call = Calls(client)
    by_node = await registered_on_every_node(client, fault_cluster, 2)
    victim = fault_cluster.ports[2]
    lost = by_node[victim]
    served = [t for port in fault_cluster.ports if port != victim for t in by_node[port]]
    assert await call(lost + served) == {200}
    await gateway.services.flush()  # the ledger holds one call of each
    fault_cluster.kill(victim)
    try:
        for _ in range(5):  # more failures than any breaker's threshold
            assert await call(served) == {200}
            assert await call(lost) == {503}
        assert (await client.get("/readyz")).status_code == 200  # the others are served
        for tenant in served:
            assert await api_calls(client, tenant) == call.admitted[tenant["id"]] == 6
        await gateway.services.flush()  # must not hold back the other nodes' tenants
        counters = gateway.services.counters
        assert isinstance(counters, ClusterCounters)
        others = [("127.0.0.1", port) for port in fault_cluster.ports if port != victim]
        assert all(counters.nodes.breaker(n).state is BreakerState.CLOSED for n in others)
        assert counters.nodes.breaker(("127.0.0.1", victim)).state is BreakerState.OPEN
    finally:
        fault_cluster.restart(victim)  # back with its slots, without its data
    clock.advance(2)  # past the breaker's cooldown: the next call probes
    deadline = asyncio.get_running_loop().time() + 15
    while await call(lost) != {200}:
        assert asyncio.get_running_loop().time() < deadline, "the node's tenants never came back"
        clock.advance(2)
        await asyncio.sleep(0.05)
    assert await call(served + lost) == {200}
    for tenant in served + lost:  # the lost ones restored from the ledger: exact still
        assert await api_calls(client, tenant) == call.admitted[tenant["id"]]


async def test_a_flush_goes_on_for_the_nodes_that_answer(fault_cluster: LocalCluster) -> None:
    """The flush and the ledger's snapshots, slot by slot and node by node: a dead node's
    tallies stay owed (sent again, once, when it is back); its hashes stay owed to the ledger."""
    ledger: dict[tuple[str, str], dict[str, int]] = {}

    async def restore(key: tuple[str, str]) -> dict[str, int]:
        return ledger.get(key, {})

    clock = FakeClock()
    counters = ClusterCounters(
        fault_cluster.url, key_prefix="tg-flush:", hydrate_from=restore, clock=clock
    )
    victim = fault_cluster.ports[1]
    chosen = tenants_by_node(fault_cluster, 2, "flushed")
    keys = {port: [(t, "2026-11") for t in tenants] for port, tenants in chosen.items()}
    everyone = [key for port in fault_cluster.ports for key in keys[port]]
    try:
        await asyncio.gather(*(counters.admit(key, "01", None, False) for key in everyone))
        ledger.update(await counters.snapshots(everyone))
        counters.drain_dirty()
        fault_cluster.kill(victim)
        try:
            with pytest.raises(StoreUnavailable):
                await counters.add({key: {"route|2xx|GET /a": 1} for key in everyone})
            for key in everyone:
                counters.mark_dirty([key])
            snapshots = await counters.snapshots(counters.drain_dirty())
            assert set(snapshots) == {k for k in everyone if k not in keys[victim]}
            assert all(tallies["route|2xx|GET /a"] == 1 for tallies in snapshots.values())
            assert counters.drain_dirty() == set(keys[victim])  # still owed to the ledger
        finally:
            fault_cluster.restart(victim)
        clock.advance(2)
        await counters.add({})  # the dead node's slots, sent again under their numbers
        await counters.add({})
        for key in everyone:
            tallies = await counters.read(key)
            assert tallies["calls"] == 1 and tallies["route|2xx|GET /a"] == 1, (key, tallies)
    finally:
        await counters.close()


async def test_a_cluster_whose_state_is_not_ok_is_not_ready(
    fault_cluster: LocalCluster, client_for: Any
) -> None:
    """With ``cluster-require-full-coverage yes`` (Redis's default), a primary lost with no
    replica to take its place stops the whole cluster: ``/readyz`` says so."""
    client = await client_for(TenantGateway(echo_app(), redis_url=fault_cluster.url))
    assert (await client.get("/readyz")).status_code == 200
    for port in fault_cluster.ports:
        fault_cluster.cli(port, "CONFIG", "SET", "cluster-require-full-coverage", "yes")
    victim = fault_cluster.ports[0]
    fault_cluster.kill(victim)
    try:
        survivors = [port for port in fault_cluster.ports if port != victim]
        deadline = asyncio.get_running_loop().time() + 30
        while any(fault_cluster.state(port) != "fail" for port in survivors):
            assert asyncio.get_running_loop().time() < deadline, "the cluster never failed"
            await asyncio.sleep(0.1)
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "cluster_state is not ok" in ready.text
    finally:
        fault_cluster.restart(victim)
        for port in fault_cluster.ports:
            fault_cluster.cli(port, "CONFIG", "SET", "cluster-require-full-coverage", "no")
    fault_cluster.wait_ok()
    assert (await client.get("/readyz")).status_code == 200
