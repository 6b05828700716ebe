"""Failover drills on a Redis Cluster, under load, through a real ``tenant-gateway serve`` on
PostgreSQL: one primary comes back with less than it had (restarted from an older dump, or its
replica promoted after it had stopped replicating). The counters of that node's tenant are
raised to the ledger before their next decision, so it loses at most the calls of the last
flush interval; the tenant on another primary is served throughout, every call counted.

Each prints its figures (``pytest -s``): docs/scaling.md quotes them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.launch import Server
from benchmarks.load import Load, Request
from benchmarks.redis_cluster import LocalCluster
from tenant_gateway.redis.slots import slot_of

from .redis_cluster import started_cluster
from .test_failover_drill import (
    CONNECTIONS,
    FLUSH_INTERVAL,
    PLANS,
    first_ok_sent_after,
    ledger_calls,
    successes,
    until,
    usage,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with started_cluster(node_timeout_ms=1000) as started:
        yield started


@asynccontextmanager
async def gateway(tmp_path: Path, postgres_url: str, redis_url: str) -> AsyncIterator[Server]:
    plans = tmp_path / "plans.json"
    plans.write_text(PLANS)
    server = Server(
        "--database-url", postgres_url,
        "--redis-url", redis_url,
        "--redis-key-prefix", f"tg-drill-{tmp_path.name}:",
        "--plans", str(plans),
        "--flush-interval", str(FLUSH_INTERVAL),
        "--signup-rate", "unlimited",
    )  # fmt: skip
    try:
        await asyncio.to_thread(server.wait_ready)
        yield server
    finally:
        log = await asyncio.to_thread(server.stop)
        assert "Traceback" not in log, log[-5000:]


@dataclass
class Tenant:
    id: str
    headers: dict[str, str]
    port: int
    """The primary serving the tenant's slot when the drill began."""


async def tenants(server: Server, cluster: LocalCluster) -> tuple[Tenant, Tenant]:
    """A tenant on the first primary (the drill's victim) and one on another."""
    found: dict[bool, Tenant] = {}
    victim = cluster.ports[0]
    async with httpx.AsyncClient(base_url=server.base) as client:
        while len(found) < 2:
            body = {"name": "Drill", "plan": "metered", "admin_email": "drill@example.com"}
            answer = (await client.post("/api/v1/tenants/register", json=body)).json()
            port = cluster.slot_owner(slot_of("{" + answer["id"] + "}"))
            headers = {"Authorization": f"Bearer {answer['api_key']}"}
            found.setdefault(port == victim, Tenant(answer["id"], headers, port))
    return found[True], found[False]


def loads(server: Server, *tenants: Tenant) -> list[Load]:
    return [
        Load(server.base, Request("GET", "/api/v1/projects", t.headers), CONNECTIONS // 2)
        for t in tenants
    ]


def ok_between(load: Load, start: float, end: float) -> int:
    return sum(1 for at in load.ok_times if start < at <= end)


async def test_a_primary_restarted_from_an_older_dump_loses_at_most_one_flush_interval(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """The victim saves a dump, takes calls for four flush intervals, crashes and restarts
    from the dump (a new run id, so a new lineage): its tenant's counter is raised to the
    ledger before its next decision; without the check it would miss every call since the
    dump. The other primary's tenant gets 200 throughout."""
    async with gateway(tmp_path, postgres_url, cluster.url) as server:
        lost_one, other = await tenants(server, cluster)
        victim, kept = loads(server, lost_one, other)
        victim.start()
        kept.start()
        await victim.until(300)
        await asyncio.to_thread(cluster.save, lost_one.port)
        saved_at = time.monotonic()
        await victim.until(300, seconds=saved_at - victim.started_at + 4 * FLUSH_INTERVAL)
        killed_at = time.monotonic()
        cluster.kill(lost_one.port)
        await asyncio.to_thread(lambda: cluster.restart(lost_one.port, from_dump=True))
        await until(
            "a 200 after the restart", lambda: bool(first_ok_sent_after(victim, killed_at)), 30
        )
        back_at = first_ok_sent_after(victim, killed_at) or killed_at
        await victim.until(300)
        await victim.stop()
        await kept.stop()
        seen, counted = successes(victim), await usage(server, lost_one.id, lost_one.headers)
        seen_kept = successes(kept)
        counted_kept = await usage(server, other.id, other.headers)
    since_dump = ok_between(victim, saved_at, killed_at)
    last_interval = ok_between(victim, killed_at - FLUSH_INTERVAL, killed_at)
    ledger = await ledger_calls(postgres_url, lost_one.id)
    lost = seen - counted
    print(
        f"\ncluster primary restarted from an older dump: {since_dump} calls answered between"
        f" the dump and the crash; 200 again {back_at - killed_at:.2f} s after SIGKILL; lost"
        f" {lost} (200s seen {seen}, usage {counted}, ledger {ledger}); one flush interval held"
        f" {last_interval} calls; the other primary's tenant: {seen_kept} calls, all 200:"
        f" {set(kept.statuses) == {200}}, usage {counted_kept}"
    )
    assert set(victim.statuses) <= {200, 503} and not victim.errors
    assert -CONNECTIONS <= lost <= 1.5 * last_interval + CONNECTIONS
    assert lost < since_dump / 2
    assert ledger == counted
    assert set(kept.statuses) == {200} and not kept.errors and counted_kept == seen_kept


async def test_a_replica_promoted_after_it_stopped_replicating_loses_at_most_one_flush_interval(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """The victim's replica stops replicating (cut off, as by a partition), the victim takes
    calls for three more flush intervals and is killed; the cluster promotes the replica, which
    holds the counter as it was three seconds earlier. Calls are served again once the cluster
    has promoted it (node timeout 1 s), and the counter is raised to the ledger first."""
    async with gateway(tmp_path, postgres_url, cluster.url) as server:
        lost_one, other = await tenants(server, cluster)
        replica = await asyncio.to_thread(cluster.add_replica, lost_one.port)
        victim, kept = loads(server, lost_one, other)
        victim.start()
        kept.start()
        await victim.until(300)
        await asyncio.to_thread(cluster.cut_off, replica)
        cut_at = time.monotonic()
        await victim.until(300, seconds=cut_at - victim.started_at + 3 * FLUSH_INTERVAL)
        killed_at = time.monotonic()
        cluster.kill(lost_one.port)
        await until(
            "a 200 after the kill", lambda: bool(first_ok_sent_after(victim, killed_at)), 30
        )
        back_at = first_ok_sent_after(victim, killed_at) or killed_at
        refused = sum(
            1
            for at, s in zip(victim.sent, victim.statuses, strict=True)
            if at > killed_at and s != 200
        )
        await victim.until(300)
        await victim.stop()
        await kept.stop()
        promoted = cluster.role(replica) == "master"
        seen, counted = successes(victim), await usage(server, lost_one.id, lost_one.headers)
        seen_kept = successes(kept)
        counted_kept = await usage(server, other.id, other.headers)
    await asyncio.to_thread(cluster.restart, lost_one.port)  # back as the replica's replica
    since_cut = ok_between(victim, cut_at, killed_at)
    last_interval = ok_between(victim, killed_at - FLUSH_INTERVAL, killed_at)
    ledger = await ledger_calls(postgres_url, lost_one.id)
    lost = seen - counted
    print(
        f"\ncluster replica promoted after it stopped replicating: {since_cut} calls answered"
        f" between the cut and the kill; 200 again {back_at - killed_at:.2f} s after SIGKILL"
        f" ({refused} answered 503 meanwhile); lost {lost} (200s seen {seen}, usage {counted},"
        f" ledger {ledger}); one flush interval held {last_interval} calls; the other"
        f" primary's tenant: {seen_kept} calls, all 200: {set(kept.statuses) == {200}}, usage"
        f" {counted_kept}"
    )
    assert promoted
    assert back_at - killed_at < 15
    assert set(victim.statuses) <= {200, 503} and not victim.errors
    assert -CONNECTIONS <= lost <= 1.5 * last_interval + CONNECTIONS
    assert lost < since_cut / 2
    assert ledger == counted
    assert set(kept.statuses) == {200} and not kept.errors and counted_kept == seen_kept
