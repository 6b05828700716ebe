"""A Redis Cluster that speaks only TLS (``rediss+cluster://``): the decisions' connections,
redis-py's cluster client and the sharded subscription all verify the nodes' certificates."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from benchmarks.redis_cluster import LocalCluster
from tenant_gateway.client_limits import limiter_for
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.redis.cluster_counters import ClusterCounters
from tenant_gateway.redis.cluster_invalidation import ClusterInvalidator
from tenant_gateway.redis.urls import limits_storage

from .conftest import FakeClock
from .redis_cluster import started_cluster
from .test_redis_cluster import tenants_by_node, until
from .test_redis_tls import make_certificates

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    certs = tmp_path_factory.mktemp("cluster-certs")
    make_certificates(certs)
    with started_cluster("Redis Cluster with TLS", tls=certs) as cluster:
        yield cluster


async def test_counters_on_a_tls_cluster(tls_cluster: LocalCluster) -> None:
    counters = ClusterCounters(tls_cluster.url, key_prefix="tls:")
    keys = [(tenant, "2026-11") for (tenant,) in tenants_by_node(tls_cluster, 1, "tls").values()]
    try:
        await counters.ping()
        assert [port for _, port in counters.nodes.primaries()] == sorted(tls_cluster.ports)
        results = await asyncio.gather(
            *(counters.admit(key, "01", 3, False) for key in keys for _ in range(5))
        )
        assert sum(result.admitted for result in results) == 3 * len(keys)
        await counters.add({key: {"route|2xx|GET /a": 3} for key in keys})
        snapshots = await counters.snapshots(keys)
        assert all(snapshots[key]["calls"] == 3 for key in keys)
        assert all(snapshots[key]["route|2xx|GET /a"] == 3 for key in keys)
    finally:
        await counters.close()


async def test_a_tls_cluster_whose_certificate_is_not_trusted(tls_cluster: LocalCluster) -> None:
    untrusted = tls_cluster.url.split("?")[0]  # the system's CAs: not the test CA
    counters = ClusterCounters(untrusted)
    try:
        with pytest.raises(StoreUnavailable, match="certificate"):
            await counters.ping()
    finally:
        await counters.close()


async def test_invalidation_on_a_tls_cluster(tls_cluster: LocalCluster) -> None:
    class Cache:
        forgotten: list[str]

        def __init__(self) -> None:
            self.forgotten = []

        def forget_tenant(self, tenant_id: str) -> None:
            self.forgotten.append(tenant_id)

        def forget_all(self) -> None:
            pass

        def confirm(self, moment: float) -> None:

            pass  # a cluster subscription sends no heartbeats

    caches = [Cache(), Cache()]
    invalidators = [ClusterInvalidator(c, tls_cluster.url, channel="tls:inv") for c in caches]
    listening = [asyncio.create_task(i.run()) for i in invalidators]
    try:
        await asyncio.wait_for(invalidators[1].ready.wait(), 10)
        await invalidators[0].tenant_changed("tenant_tls")
        await until(lambda: caches[1].forgotten == ["tenant_tls"])
    finally:
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)
        for invalidator in invalidators:
            await invalidator.close()


async def test_sign_ups_are_limited_on_a_tls_cluster(tls_cluster: LocalCluster) -> None:
    """``limits`` gets the URL's TLS options, which it cannot read from its own URI."""
    limiter = limiter_for(
        "2/day", "signup_rate", FakeClock(), storage=limits_storage(tls_cluster.url)
    )
    assert limiter is not None
    try:
        waits = [await limiter.hit("203.0.113.9") for _ in range(3)]
        assert waits[:2] == [0, 0] and waits[2] > 0
    finally:
        await limiter.close()
