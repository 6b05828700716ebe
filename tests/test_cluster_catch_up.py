"""Counters never trail the ledger on a Redis Cluster (``redis/cluster_lineage.py``): each primary
has a lineage of its own, every script call carries the lineage of the node it runs on, and a
node that comes back with less (restarted empty or from an older dump, a replica promoted
before it had every write, a primary promoted again under a live connection) has each of its
hashes checked against the ledger, and raised to it, before it is used; the other nodes'
hashes are not read from the ledger at all. On a cluster of this module's own, given replicas
and broken on purpose."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from benchmarks.redis_cluster import LocalCluster
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.redis.cluster_counters import ClusterCounters
from tenant_gateway.redis.slots import slot_of
from tenant_gateway.tallies import HYDRATED

from .conftest import FakeClock
from .redis_cluster import started_cluster

pytestmark = pytest.mark.slow

PERIOD = "2026-11"
ROUTE = "route|2xx|GET /x"
T = TypeVar("T")
Key = tuple[str, str]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with started_cluster(node_timeout_ms=1000) as started:
        yield started


class Ledger:
    """The hydration source: what PostgreSQL's ledger would answer (snapshots of the hashes),
    and how often each hash was read from it."""

    def __init__(self) -> None:
        self.rows: dict[Key, dict[str, int]] = {}
        self.reads: Counter[Key] = Counter()

    async def __call__(self, key: Key) -> dict[str, int]:
        self.reads[key] += 1
        return self.rows.get(key, {})

    async def snapshot(self, counters: ClusterCounters, keys: list[Key]) -> None:
        self.rows.update(await counters.snapshots(keys))


def primaries(cluster: LocalCluster) -> list[int]:
    running = [port for port, process in cluster.processes.items() if process.poll() is None]
    return sorted(port for port in running if cluster.role(port) == "master")


def tenants_on(cluster: LocalCluster, ports: list[int], prefix: str) -> dict[int, list[Key]]:
    """Two tenants' keys on each of ``ports`` (primaries, by the slots they serve now)."""
    found: dict[int, list[Key]] = {port: [] for port in ports}
    number = 0
    while min(map(len, found.values())) < 2:
        tenant = f"{prefix}_{number}"
        owner = cluster.slot_owner(slot_of(f"{{{tenant}}}"))
        if owner in found and len(found[owner]) < 2:
            found[owner].append((tenant, PERIOD))
        number += 1
    return found


async def until_answered(
    call: Callable[[], Awaitable[T]], clock: FakeClock, within: float = 30.0
) -> T:
    """``call()``'s answer, once the cluster serves it again; each failure moves the injected
    clock past the breakers' cooldown, so the next try is a probe."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if loop.time() > deadline:
                raise
            clock.advance(2)
            await asyncio.sleep(0.05)


async def until_true(what: str, condition: Callable[[], bool], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {within:g} s"
        await asyncio.sleep(0.05)


async def decide(counters: ClusterCounters, keys: list[Key], rounds: int = 1) -> list[int]:
    """Each key's usage after ``rounds`` decisions on each (every key once per turn)."""
    used: list[int] = []
    for _ in range(rounds):
        futures = []
        try:
            for key in keys:  # one may be refused at once (its node's circuit is open)
                futures.append(counters.admit(key, "01", None, False))
        finally:
            found = await asyncio.gather(*futures, return_exceptions=True)
        for outcome in found:
            if isinstance(outcome, BaseException):
                raise outcome
        used = [admission.used for admission in found if not isinstance(admission, BaseException)]
    return used


def name(prefix: str, key: Key) -> str:
    return f"{prefix}usage:{{{key[0]}}}:{key[1]}"


@pytest.mark.parametrize("from_dump", [True, False], ids=["older-dump", "empty"])
async def test_a_primary_restarted_is_raised_to_the_ledger_and_no_other_node_is_read(
    cluster: LocalCluster, from_dump: bool
) -> None:
    """A primary restarted from a dump older than the ledger (or empty) holds less than the
    ledger: its tenants' hashes are checked and raised before the next tally and decision;
    the other primaries' tenants are not read from the ledger. Without the node's lineage the
    dump's hashes would pass for checked and stay 40 calls short all month."""
    prefix = f"tg-dump-{from_dump}:"
    ledger, clock = Ledger(), FakeClock()
    counters = ClusterCounters(cluster.url, key_prefix=prefix, hydrate_from=ledger, clock=clock)
    victim, *others = primaries(cluster)
    by_node = tenants_on(cluster, [victim, *others], prefix.strip(":"))
    everyone = [key for keys in by_node.values() for key in keys]
    lost = by_node[victim]
    try:
        await decide(counters, everyone, 10)
        cluster.save(victim)  # the dump: 10 calls each
        assert await decide(counters, everyone, 40) == [50] * len(everyone)
        await counters.add({key: {ROUTE: 50} for key in everyone})
        await ledger.snapshot(counters, everyone)
        assert all(ledger.rows[key]["calls"] == 50 for key in everyone)
        before = {port: counters.nodes.lineages.lineage(("127.0.0.1", port)) for port in by_node}
        cluster.kill(victim)
        cluster.restart(victim, from_dump=from_dump)
        held = [cluster.cli(victim, "HGET", name(prefix, key), "calls").strip() for key in lost]
        assert held == (["10", "10"] if from_dump else ["", ""])
        if from_dump:
            stamps = {cluster.cli(victim, "HGET", name(prefix, key), HYDRATED) for key in lost}
            assert stamps == {f"{before[victim]}\n"}  # the old lineage's: no hint of the loss
        ledger.reads.clear()
        # The flush first: its tally lands on the raised hash, not on the dump's.
        try:
            await counters.add({key: {ROUTE: 1} for key in everyone})
        except StoreUnavailable:  # the victim's old connection: its slot's batch goes again
            await until_answered(lambda: counters.add({}), clock)
        assert ledger.reads == Counter(lost)  # once each, and the other nodes' not at all
        assert await decide(counters, everyone) == [51] * len(everyone)
        for key in everyone:
            tallies = await counters.read(key)
            assert tallies["calls"] == tallies["day:01"] == tallies[ROUTE] == 51, (key, tallies)
        assert ledger.reads == Counter(lost)  # checked once on the node's new data set
        after = {port: counters.nodes.lineages.lineage(("127.0.0.1", port)) for port in by_node}
        assert after[victim] != before[victim]
        assert all(after[port] == before[port] for port in others)
    finally:
        await counters.close()


async def failover(cluster: LocalCluster, to: int) -> None:
    """``CLUSTER FAILOVER`` on the replica ``to``, once it is in sync: it and its primary swap
    roles, nothing lost. Asked again if it times out (Redis gives a manual failover 5 s: one
    asked right after the last may find the cluster not settled yet)."""
    await until_true(f"{to} in sync", lambda: in_sync(cluster.cli(to, "INFO", "replication")))
    for _ in range(3):
        assert cluster.cli(to, "CLUSTER", "FAILOVER").strip() == "OK"
        try:
            await until_true(f"{to} promoted", lambda: cluster.role(to) == "master", 7)
            break
        except AssertionError:
            continue
    await until_true(f"{to} promoted", lambda: cluster.role(to) == "master", 7)
    await asyncio.to_thread(cluster.wait_settled)


def in_sync(replication: str) -> bool:
    return "master_link_status:up" in replication and "master_sync_in_progress:0" in replication


@pytest.mark.parametrize("busy", [True, False], ids=["redirected", "idle"])
async def test_a_primary_promoted_again_under_a_live_connection_is_asked_again(
    cluster: LocalCluster, busy: bool
) -> None:
    """The primary hands over to its replica and takes over again: Redis keeps the client
    connections through both, so no connect tells the node's lineage changed. One tenant's
    hash is lowered on the replica while it serves (as a replica that missed the last writes
    would hold it); back on the first node it must still be raised to the ledger. The node is
    asked again when a redirection gives it its slots back (``redirected``: this process sent
    calls meanwhile), or at the next flush (``idle``: it sent nothing, its map never changed)."""
    prefix = f"tg-again-{busy}:"
    ledger, clock = Ledger(), FakeClock()
    counters = ClusterCounters(cluster.url, key_prefix=prefix, hydrate_from=ledger, clock=clock)
    primary = primaries(cluster)[2 if busy else 1]  # a node not failed over yet
    replica = await asyncio.to_thread(cluster.add_replica, primary)
    short, busy_key = tenants_on(cluster, [primary], prefix.strip(":"))[primary]
    node = ("127.0.0.1", primary)
    try:
        await decide(counters, [short, busy_key], 10)
        await ledger.snapshot(counters, [short, busy_key])
        first = counters.nodes.lineages.lineage(node)
        await failover(cluster, replica)
        cluster.cli(replica, "HSET", name(prefix, short), "calls", "3", "day:01", "3")
        if busy:
            assert await decide(counters, [busy_key]) == [11]  # followed MOVED to the replica
        await failover(cluster, primary)
        if busy:
            assert await decide(counters, [busy_key]) == [12]  # MOVED back: the node asked
        else:
            await counters.add({})  # the flush has every primary asked again
            await until_true("asked", lambda: counters.nodes.lineages.lineage(node) != first, 10)
        ledger.reads.clear()
        assert await decide(counters, [short]) == [11]  # 4 if the node were taken as before
        assert ledger.reads[short] == 1
        assert counters.nodes.lineages.lineage(node) != first
    finally:
        await counters.close()


async def test_a_replica_promoted_with_less_is_raised_to_the_ledger(
    cluster: LocalCluster,
) -> None:
    """A primary dies and the cluster promotes its replica, which had stopped replicating 40
    calls earlier: the promoted node's lineage is another, so its tenants' hashes are raised
    to the ledger before their next decision, and calls are served again."""
    prefix = "tg-promoted:"
    ledger, clock = Ledger(), FakeClock()
    counters = ClusterCounters(cluster.url, key_prefix=prefix, hydrate_from=ledger, clock=clock)
    victim, *others = primaries(cluster)
    replica = cluster.add_replica(victim)
    by_node = tenants_on(cluster, [victim, *others], "promoted")
    everyone = [key for keys in by_node.values() for key in keys]
    lost, kept = by_node[victim], [key for port in others for key in by_node[port]]
    try:
        await decide(counters, everyone, 10)
        cluster.cut_off(replica)  # it keeps 10 calls each
        await decide(counters, everyone, 40)
        await counters.add({key: {ROUTE: 50} for key in everyone})
        await ledger.snapshot(counters, everyone)
        ledger.reads.clear()
        cluster.kill(victim)
        await until_true("the replica promoted", lambda: cluster.role(replica) == "master")
        assert await decide(counters, kept) == [51] * len(kept)  # served throughout
        used = await until_answered(lambda: decide(counters, lost), clock)
        assert used == [51, 51]  # 11 without the check
        assert cluster.slot_owner(slot_of(f"{{{lost[0][0]}}}")) == replica
        assert ledger.reads == Counter(lost)
        for key in lost:
            tallies = await counters.read(key)
            assert tallies["calls"] == 51 and tallies[ROUTE] == 50, tallies
    finally:
        await counters.close()
        cluster.cli(replica, "CONFIG", "SET", "masterauth", "")  # a replica again one day
        if cluster.processes[victim].poll() is not None:
            cluster.restart(victim)  # back as the new primary's replica
