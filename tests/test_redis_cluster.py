"""Redis Cluster: URLs, the slot map, redirections, the flush's marker per slot, readiness,
invalidation and the shared windows, against the 3-primary cluster the suite starts."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from benchmarks.launch import run_cli
from benchmarks.redis_cluster import LocalCluster
from tenant_gateway import TenantGateway
from tenant_gateway.client_limits import limiter_for
from tenant_gateway.exceptions import ConfigurationError, StoreUnavailable
from tenant_gateway.redis.cluster_counters import ClusterCounters
from tenant_gateway.redis.cluster_invalidation import ClusterInvalidator
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.pipeline import PipelinedRedis
from tenant_gateway.redis.roles import WrongServer
from tenant_gateway.redis.slots import (
    owners_from_shards,
    owners_from_slots,
    slot_of,
)
from tenant_gateway.redis.urls import check_redis_url, limits_storage
from tenant_gateway.settings import Settings

from .apps import echo_app
from .conftest import JWT_SECRET, FakeClock, auth, operator_headers, register
from .test_propagation import until_status

T = "/api/v1/tenants"
PERIOD = "2026-11"

# -- URLs --------------------------------------------------------------------------------------

BAD_URLS = [
    ("http://127.0.0.1:6379", "unsupported scheme"),
    ("redis//127.0.0.1:6379", "unsupported scheme"),
    ("redis://127.0.0.1:99999/0", "bad port"),
    ("redis://127.0.0.1:port/0", "bad port"),
    ("redis://:s3cret@127.0.0.1:0/0", "bad port"),
    ("redis://127.0.0.1:6379/zero", "the database must be a number"),
    ("redis://127.0.0.1:6379/0?sockettimeout=1", "unknown option 'sockettimeout'"),
    ("redis://127.0.0.1:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
    ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs TLS"),
    ("unix://", "no socket path"),
    ("redis+cluster://", "no host:port to start from"),
    ("redis+cluster://127.0.0.1:7000/1", "a cluster has one database"),
    ("redis+cluster://127.0.0.1:7000?db=1", "a cluster has one database"),
    ("redis+cluster://127.0.0.1:7000,127.0.0.1:70000", "bad port in '127.0.0.1:70000'"),
    ("redis+cluster://:s3cret@127.0.0.1:7000?ssl_certfile=/c.pem", "ssl_certfile needs TLS"),
    ("rediss+cluster://127.0.0.1:7000?ssl_min_version=new", "Invalid value for 'ssl_min_version'"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_bad_redis_url_is_one_line_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings(redis_url=url)
    message = str(refused.value)
    assert problem in message and "\n" not in message and "s3cret" not in message
    with pytest.raises(ConfigurationError):
        TenantGateway(echo_app(), redis_url=url)


@pytest.mark.parametrize("url", [BAD_URLS[2][0], BAD_URLS[12][0], BAD_URLS[14][0]])
def test_serve_refuses_a_bad_redis_url_in_one_line(url: str) -> None:
    done = run_cli("serve", "--port", "1", "--redis-url", url)
    assert done.returncode == 2
    assert done.stderr.startswith("tenant-gateway: error: redis_url ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr


def test_cluster_urls_name_the_nodes_their_credentials_and_tls() -> None:
    url = "rediss+cluster://app:p%40ss@a.internal:7000,[::1]:7001?ssl_ca_certs=/ca.pem"
    found = check_redis_url(url)
    assert found is not None and found.tls
    assert found.seeds == (("a.internal", 7000), ("::1", 7001))
    assert found.node_url("10.0.0.9", 7002) == (
        "rediss://app:p%40ss@10.0.0.9:7002?ssl_ca_certs=/ca.pem"
    )
    options = found.client_options()
    assert options["password"] == "p@ss" and options["ssl"] is True
    assert options["ssl_ca_certs"] == "/ca.pem"
    assert check_redis_url("redis+cluster://a:7000") is not None
    assert check_redis_url("redis://a:7000/3") is None  # one server
    uri, shared = limits_storage(url)
    assert uri == "async+redis+cluster://a.internal:7000,[::1]:7001"
    assert shared["username"] == "app" and shared["ssl"] is True


# -- the key space -----------------------------------------------------------------------------


async def test_the_slot_map_from_shards_and_from_slots_agree(redis_cluster: LocalCluster) -> None:
    pipe = PipelinedRedis(f"redis://127.0.0.1:{redis_cluster.ports[0]}")
    await pipe.connect()
    try:
        shards = owners_from_shards(await pipe.send("CLUSTER", "SHARDS"), "127.0.0.1", False)
        slots = owners_from_slots(await pipe.send("CLUSTER", "SLOTS"), "127.0.0.1")
    finally:
        await pipe.close()
    assert shards == slots and None not in shards
    for slot in (0, 5460, 5461, 10922, 10923, 16383):
        assert shards[slot] == ("127.0.0.1", redis_cluster.slot_owner(slot))


def tenants_by_node(
    cluster: LocalCluster, count: int, prefix: str = "tenant"
) -> dict[int, list[str]]:
    """``count`` tenant ids for each primary (by the port of the node that serves them)."""
    found: dict[int, list[str]] = {port: [] for port in cluster.ports}
    owners: dict[int, int] = {}
    number = 0
    while min(map(len, found.values())) < count:
        tenant = f"{prefix}_{number}"
        slot = slot_of(f"{{{tenant}}}")
        if slot not in owners:
            owners[slot] = cluster.slot_owner(slot)
        if len(found[owners[slot]]) < count:
            found[owners[slot]].append(tenant)
        number += 1
    return found


# -- redirections ------------------------------------------------------------------------------


class Migration:
    """Moves one slot from its primary to another, as ``redis-cli --cluster reshard`` does."""

    def __init__(self, cluster: LocalCluster, slot: int, target: int) -> None:
        self.cluster, self.slot = cluster, slot
        self.source, self.target = cluster.slot_owner(slot), target
        self.ids = {port: cluster.cli(port, "CLUSTER", "MYID").strip() for port in cluster.ports}

    def begin(self) -> None:
        slot = str(self.slot)
        self.cluster.cli(
            self.target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[self.source]
        )
        self.cluster.cli(
            self.source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[self.target]
        )

    def move_keys(self, *keys: str) -> None:
        done = self.cluster.cli(
            self.source, "MIGRATE", "127.0.0.1", str(self.target), "", "0", "5000", "KEYS", *keys
        )
        assert done.strip() in ("OK", "NOKEY"), done

    def finish(self) -> None:
        for port in (self.target, self.source, *self.cluster.ports):
            self.cluster.cli(
                port, "CLUSTER", "SETSLOT", str(self.slot), "NODE", self.ids[self.target]
            )

    def keys_left(self) -> list[str]:
        return self.cluster.cli(
            self.source, "CLUSTER", "GETKEYSINSLOT", str(self.slot), "1000"
        ).split()


async def test_a_moved_slot_is_followed_and_decisions_stay_exact(
    redis_cluster: LocalCluster, cluster_url: str, cluster_prefix: str
) -> None:
    counters = ClusterCounters(cluster_url, key_prefix=cluster_prefix)
    tenant = tenants_by_node(redis_cluster, 1, "moved")[redis_cluster.ports[0]][0]
    key = (tenant, PERIOD)
    slot = slot_of(f"{{{tenant}}}")
    try:
        assert (await counters.admit(key, "01", 100, False)).used == 1
        migration = Migration(redis_cluster, slot, redis_cluster.ports[1])
        migration.begin()
        migration.move_keys(*migration.keys_left())
        migration.finish()
        # this process still names the old primary: it answers MOVED, once for the turn
        results = await asyncio.gather(*(counters.admit(key, "01", 100, False) for _ in range(20)))
        assert sorted(r.used for r in results) == list(range(2, 22))
        assert counters.nodes.owner(slot) == ("127.0.0.1", redis_cluster.ports[1])
        await counters.add({key: {"route|2xx|GET /x": 21}})
        assert (await counters.read(key))["calls"] == 21
    finally:
        await counters.close()


async def test_a_slot_in_migration_is_followed_with_asking(
    redis_cluster: LocalCluster, cluster_url: str, cluster_prefix: str
) -> None:
    """The tenant's hash has moved, its slot not yet: the old primary answers ASK, and the
    decision runs on the new one after ASKING. A flush in that state meets TRYAGAIN (its
    marker is not moved yet), fails its slot alone, and applies once when the move is over."""
    counters = ClusterCounters(cluster_url, key_prefix=cluster_prefix)
    chosen = tenants_by_node(redis_cluster, 2, "asked")
    tenant, bystander = chosen[redis_cluster.ports[2]][0], chosen[redis_cluster.ports[1]][0]
    key, other = (tenant, PERIOD), (bystander, PERIOD)
    slot = slot_of(f"{{{tenant}}}")
    migration = Migration(redis_cluster, slot, redis_cluster.ports[0])
    try:
        await counters.admit(key, "01", 100, False)
        await counters.admit(other, "01", 100, False)
        await counters.add({key: {"route|2xx|GET /x": 1}})  # the marker exists on the old primary
        migration.begin()
        migration.move_keys(f"{cluster_prefix}usage:{{{tenant}}}:{PERIOD}")
        results = await asyncio.gather(*(counters.admit(key, "01", 100, False) for _ in range(5)))
        assert sorted(r.used for r in results) == [2, 3, 4, 5, 6]
        with pytest.raises(StoreUnavailable, match="TRYAGAIN"):
            await counters.add({key: {"route|2xx|GET /x": 1}, other: {"route|2xx|GET /y": 1}})
        assert (await counters.read(other))["route|2xx|GET /y"] == 1  # its slot went on
        migration.move_keys(*migration.keys_left())
        migration.finish()
        await counters.add({})  # the slot's batch, again, under its number
        tallies = await counters.read(key)
        assert tallies["calls"] == 6 and tallies["route|2xx|GET /x"] == 2
    finally:
        await counters.close()


async def test_a_flush_resent_to_its_slot_is_applied_once(
    cluster_url: str, cluster_prefix: str
) -> None:
    """The marker of a writer's batch lives in the batch's own slot: the same batch sent
    twice (its reply lost) is applied once, and a later one is applied."""
    counters = ClusterCounters(cluster_url, key_prefix=cluster_prefix)
    key = ("tenant_marker", PERIOD)
    slot = slot_of(f"{{{key[0]}}}")
    batch = {key: Counter({"rejected": 1, "rejected:burst": 1})}
    try:
        await counters.read(key)
        for _ in range(3):
            await counters._send_slot(slot, 7, batch)
        await counters._send_slot(slot, 8, batch)
        tallies = await counters.read(key)
        assert tallies["rejected"] == 2 and tallies["rejected:burst"] == 2
    finally:
        await counters.close()


# -- readiness ---------------------------------------------------------------------------------


async def test_a_cluster_that_is_ok_is_ready(cluster_url: str) -> None:
    counters = ClusterCounters(cluster_url)
    try:
        await counters.ping()
        assert len(counters.nodes.primaries()) == 3
    finally:
        await counters.close()


async def test_a_plain_url_to_a_cluster_node_is_not_ready(redis_cluster: LocalCluster) -> None:
    counters = RedisCounters(f"redis://127.0.0.1:{redis_cluster.ports[0]}")
    try:
        with pytest.raises(StoreUnavailable, match="Redis Cluster node") as refused:
            await counters.ping()
        assert isinstance(refused.value.__cause__, WrongServer)
    finally:
        await counters.close()


async def test_a_cluster_url_to_a_server_without_cluster_is_not_ready(redis_url: str) -> None:
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    counters = ClusterCounters(f"redis+cluster://{host_port}")
    try:
        with pytest.raises(StoreUnavailable, match="cluster support disabled"):
            await counters.ping()
    finally:
        await counters.close()


def test_serve_refuses_a_plain_url_to_a_cluster_node(redis_cluster: LocalCluster) -> None:
    node = f"127.0.0.1:{redis_cluster.ports[1]}"
    done = run_cli("serve", "--port", "1", "--redis-url", f"redis://{node}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        f"tenant-gateway: error: --redis-url redis://{node}: it is a Redis Cluster node:"
        f" name the cluster, redis+cluster://{node}\n"
    )


# -- invalidation ------------------------------------------------------------------------------


async def test_a_change_reaches_another_process_through_the_cluster(
    postgres_url: str, cluster_url: str, cluster_prefix: str, client_for: Any
) -> None:
    """Two gateways on one cluster; the clock is frozen, so the cache never expires: only the
    sharded publication can make the second one notice."""
    kwargs: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": cluster_url,
        "redis_key_prefix": cluster_prefix,
        "admin_jwt_secret": JWT_SECRET,
        "clock": FakeClock(),
    }
    first, second = TenantGateway(echo_app(), **kwargs), TenantGateway(echo_app(), **kwargs)
    a, b = await client_for(first), await client_for(second)
    invalidator = second.services.invalidator
    assert isinstance(invalidator, ClusterInvalidator)
    await asyncio.wait_for(invalidator.ready.wait(), 10)
    tenant = await register(a)
    assert (await b.get("/whoami", headers=auth(tenant))).status_code == 200  # cached in B
    await a.post(f"{T}/{tenant['id']}/suspend", headers=operator_headers())
    await until_status(b, auth(tenant), 403)
    await a.post(f"{T}/{tenant['id']}/resume", headers=operator_headers())
    await until_status(b, auth(tenant), 200)


async def test_the_subscriber_follows_the_channel_when_its_slot_moves(
    redis_cluster: LocalCluster, cluster_url: str, cluster_prefix: str
) -> None:
    class Cache:
        def __init__(self) -> None:
            self.forgotten: list[str] = []
            self.emptied = 0

        def forget_tenant(self, tenant_id: str) -> None:
            self.forgotten.append(tenant_id)

        def forget_all(self) -> None:
            self.emptied += 1

        def confirm(self, moment: float) -> None:
            pass  # a cluster subscription sends no heartbeats

    channel = f"{cluster_prefix}invalidate"
    caches = [Cache(), Cache()]
    invalidators = [ClusterInvalidator(c, cluster_url, channel=channel) for c in caches]
    listening = [asyncio.create_task(i.run()) for i in invalidators]
    slot = slot_of(channel)
    try:
        await asyncio.wait_for(invalidators[1].ready.wait(), 10)
        await invalidators[0].tenant_changed("tenant_1")
        await until(lambda: caches[1].forgotten == ["tenant_1"])
        target = next(p for p in redis_cluster.ports if p != redis_cluster.slot_owner(slot))
        migration = Migration(redis_cluster, slot, target)
        migration.begin()
        migration.finish()  # the channel's slot now lives on another primary
        await until(lambda: caches[1].emptied == 2 and invalidators[1].ready.is_set())
        await invalidators[0].tenant_changed("tenant_2")
        await until(lambda: caches[1].forgotten == ["tenant_1", "tenant_2"])
    finally:
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)
        for invalidator in invalidators:
            await invalidator.close()


async def until(condition: Any, seconds: float = 15.0) -> None:
    """Poll ``condition()`` until it holds (a real cluster takes its time), or fail."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


# -- the windows shared through Redis ----------------------------------------------------------


async def test_the_burst_window_can_be_shared_on_the_cluster(
    postgres_url: str, cluster_url: str, cluster_prefix: str, client_for: Any
) -> None:
    shared: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": cluster_url,
        "redis_key_prefix": cluster_prefix,
        "burst_storage": cluster_url.replace("redis+cluster://", "async+redis+cluster://"),
    }
    client = await client_for(TenantGateway(echo_app(), **shared))
    other = await client_for(TenantGateway(echo_app(), **shared))
    tenant = await register(client)  # free: 10 per second
    statuses = [
        (await c.get("/whoami", headers=auth(tenant))).status_code
        for c in (client, other, client, other, client, other)
        for _ in range(2)
    ]
    assert statuses.count(200) == 10 and statuses.count(429) == 2


@pytest.mark.parametrize(
    "uri",
    [
        "async+rediss+cluster://127.0.0.1:7000",  # no such scheme in limits
        "async+redis+cluster://127.0.0.1:7000?ssl=true",  # limits would drop the option
    ],
)
def test_a_burst_storage_limits_cannot_serve_is_a_configuration_error(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="burst_storage"):
        TenantGateway(echo_app(), burst_storage=uri)


async def test_sign_ups_are_limited_across_processes_on_the_cluster(
    cluster_url: str, cluster_prefix: str
) -> None:
    """Two processes' limiters on one cluster: three sign-ups a day from an address in all."""
    limiters = []
    for _ in range(2):
        limiter = limiter_for(
            "3/day",
            "signup_rate",
            FakeClock(),
            storage=limits_storage(cluster_url),
            key_prefix=cluster_prefix,
        )
        assert limiter is not None
        limiters.append(limiter)
    try:
        waits = [await limiters[n % 2].hit("203.0.113.7") for n in range(5)]
        assert waits[:3] == [0, 0, 0] and min(waits[3:]) > 0
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_keys_of_the_counters_hash_by_tenant(cluster_url: str, cluster_prefix: str) -> None:
    """Every key a tenant's usage touches is in the tenant's slot."""
    client = aioredis.RedisCluster.from_url(
        cluster_url.replace("redis+cluster", "redis").split(",")[0]
    )
    counters = ClusterCounters(cluster_url, key_prefix=cluster_prefix)
    try:
        await counters.admit(("tenant_slots", PERIOD), "01", None, False)
        await counters.add({("tenant_slots", PERIOD): {"route|2xx|GET /a": 1}})
        names = [name async for name in client.scan_iter(match=f"{cluster_prefix}*")]
        slots = {await client.cluster_keyslot(name) for name in names}
        assert slots == {slot_of("{tenant_slots}")}
    finally:
        await counters.close()
        await client.aclose()
