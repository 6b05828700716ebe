"""Redis behind Sentinel (``redis/sentinel.py``): the URL, and every client following a
promotion without a restart, on a primary, a replica and three sentinels started here
(``tests/sentinels.py``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from benchmarks.launch import free_port, run_cli
from tenant_gateway import TenantGateway
from tenant_gateway.client_limits import limiter_for
from tenant_gateway.exceptions import ConfigurationError, StoreUnavailable
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.invalidation import RedisInvalidator
from tenant_gateway.redis.sentinel import SentinelURL
from tenant_gateway.redis.urls import check_redis_url, limits_storage

from .apps import echo_app
from .conftest import FakeClock, auth, register
from .helpers import assert_problem
from .sentinels import SentinelGroup

KEY = ("tenant_a", "2026-11")


# -- the URL ---------------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_data_nodes() -> None:
    url = SentinelURL.parse(
        "redis+sentinel://app:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:5000/cache/3"
        "?sentinel_password=theirs"
    )
    assert url.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 5000))
    assert url.service == "cache"
    nodes = url.node_options()
    assert (nodes["username"], nodes["password"], nodes["db"]) == ("app", "s@cret", 3)
    assert "ssl" not in nodes
    sentinels = url.sentinel_options(0.5)
    assert (sentinels["username"], sentinels["password"]) == (None, "theirs")
    assert sentinels["socket_timeout"] == 0.5 and "ssl" not in sentinels


def test_tls_options_reach_the_sentinels_and_the_data_nodes() -> None:
    url = SentinelURL.parse("rediss+sentinel://h:1/svc?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    for options in (url.node_options(), url.sentinel_options(1.0)):
        assert options["ssl"] is True
        assert (options["ssl_cert_reqs"], options["ssl_ca_certs"]) == ("none", "/ca.pem")
    assert url.node_options()["db"] == 0


def test_shared_limits_use_the_primary_of_the_same_service() -> None:
    storage, options = limits_storage("redis+sentinel://:pw@h:1,k:2/svc/2")
    assert storage == "async+redis+sentinel://h:1,k:2/svc"
    assert options["use_replicas"] is False
    assert (options["password"], options["db"]) == ("pw", 2)
    assert options["sentinel_kwargs"]["password"] is None
    assert limits_storage("redis://h:1/0") == ("async+redis://h:1/0", {})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:1", "no service name"),
        ("redis+sentinel://h:1/", "no service name"),
        ("redis+sentinel://h:1/svc/x", "the database must be a number"),
        ("redis+sentinel://h:99999/svc", "bad sentinel port"),
        ("redis+sentinel://h:1,:2/svc", "without a host"),
        ("redis+sentinel://[::1/svc", "bad sentinel address"),
        ("redis+sentinel://h:1/svc?timeout=3", "unknown option 'timeout'"),
        ("redis+sentinel://h:1/svc?ssl_cert_reqs=none", "unknown option 'ssl_cert_reqs'"),
        ("rediss+sentinel://h:1/svc?ssl_min_version=x", "ssl_min_version"),
        ("redis+cluster-ish://h:1", "unsupported scheme"),
        ("http://h:1/0", "unsupported scheme"),
    ],
)
def test_a_malformed_url_names_its_problem(url: str, problem: str) -> None:
    secret = url.replace("://", "://user:hunter2@", 1)
    with pytest.raises(ConfigurationError) as refused:
        check_redis_url(secret)
    message = str(refused.value)
    assert problem in message and "\n" not in message
    assert "hunter2" not in message
    with pytest.raises(ConfigurationError):
        TenantGateway(echo_app(), redis_url=secret)


@pytest.mark.slow
def test_serve_refuses_a_malformed_sentinel_url_in_one_line() -> None:
    url = "redis+sentinel://user:hunter2@h:1,h:2/svc/db?sentinel_password=x"
    result = run_cli("serve", "--port", str(free_port()), "--redis-url", url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the database must be a number" in lines[0], result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


# -- following a promotion -------------------------------------------------------------------


async def _until_answered(call: Any, within: float) -> float:
    """Seconds until ``call()`` stops raising ``StoreUnavailable`` (at most ``within``)."""
    started = time.monotonic()
    while True:
        try:
            await call()
            return time.monotonic() - started
        except StoreUnavailable:
            if time.monotonic() - started > within:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_every_client_follows_a_promotion(
    sentinel_group: SentinelGroup, redis_prefix: str
) -> None:
    """The decisions (pipelined), the flush and reads (redis-py), the shared rate limits
    (``limits``) and the invalidation channel all reach the promoted replica, with no
    restart; nothing counted before the crash is lost (the replica had it)."""
    url = sentinel_group.url
    counters = RedisCounters(url, key_prefix=redis_prefix)  # the real clock: the breaker recovers
    limiter = limiter_for(
        "100/minute",
        "signup_rate",
        FakeClock(),
        storage=limits_storage(url),
        key_prefix=redis_prefix,
    )
    assert limiter is not None
    cache = _Evictions()
    invalidator = RedisInvalidator(cache, url, channel=f"{redis_prefix}invalidate")
    listening = asyncio.create_task(invalidator.run())
    try:
        await counters.ping()
        for _ in range(5):
            assert (await counters.admit(KEY, "01", 100, False)).admitted
        await counters.add({KEY: {"route|2xx|GET /x": 5}})
        assert await limiter.hit("203.0.113.7") == 0
        await asyncio.wait_for(invalidator.ready.wait(), 10)
        old = sentinel_group.primary()
        with old.client() as client:  # the replica has everything before the crash
            client.execute_command("WAIT", 1, 1000)
        old.kill()

        async def decide() -> None:
            assert (await counters.admit(KEY, "01", 100, False)).used == 6

        assert await _until_answered(decide, 15) < 15
        new = sentinel_group.primary()
        assert new is not old
        await counters.add({KEY: {"route|2xx|GET /x": 1}})
        tallies = await counters.read(KEY)
        assert tallies["calls"] == 6 and tallies["route|2xx|GET /x"] == 6
        await counters.ping()

        async def hit() -> None:
            assert await limiter.hit("203.0.113.7") == 0

        await _until_answered(hit, 15)
        await asyncio.wait_for(_resubscribed(invalidator, cache, new.port), 15)
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await invalidator.close()
        await limiter.close()
        await counters.close()


class _Evictions:
    """A key cache that only records what it is told to forget."""

    def __init__(self) -> None:
        self.tenants: list[str] = []

    def forget_tenant(self, tenant_id: str) -> None:
        self.tenants.append(tenant_id)

    def forget_all(self) -> None:
        pass

    def confirm(self, moment: float) -> None:
        pass


async def _resubscribed(invalidator: RedisInvalidator, cache: _Evictions, port: int) -> None:
    """Until a change published on the new primary reaches the cache."""
    publisher = aioredis.Redis(port=port)
    try:
        while "tenant_b" not in cache.tenants:
            await invalidator.ready.wait()
            await publisher.publish(invalidator._channel, "tenant_b")
            await asyncio.sleep(0.1)
    finally:
        await publisher.aclose()


# -- readiness -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_readiness_and_start_up_tell_a_primary_from_a_replica_or_a_sentinel(
    sentinel_group: SentinelGroup, redis_prefix: str, client_for: Any
) -> None:
    """A gateway given the primary's own address is ready until a switchover makes it a
    replica; then it says so, and its metered calls answer 503 (never 500). One given the
    service follows. A replica or a sentinel given as ``redis://`` is refused at start-up."""
    primary = sentinel_group.primary()
    fixed = await client_for(
        TenantGateway(echo_app(), redis_url=primary.url, redis_key_prefix=redis_prefix)
    )
    followed = await client_for(
        TenantGateway(echo_app(), redis_url=sentinel_group.url, redis_key_prefix=redis_prefix)
    )
    tenants = [await register(client) for client in (fixed, followed)]
    for client, tenant in zip((fixed, followed), tenants, strict=True):
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    # The gateways keep running meanwhile: the blocking waits go to a thread.
    await asyncio.to_thread(sentinel_group.switch_over)

    problem = assert_problem(await fixed.get("/readyz"), 503, "not_ready")
    assert "it is a replica" in problem["checks"]["redis"], problem
    assert_problem(await fixed.get("/whoami", headers=auth(tenants[0])), 503, "quota_unavailable")

    async def ready() -> None:
        response = await followed.get("/readyz")
        if response.status_code != 200:
            raise StoreUnavailable("Redis", "", response.text)
        assert (await followed.get("/whoami", headers=auth(tenants[1]))).status_code == 200

    await _until_answered(ready, 15)

    sentinel = f"redis://127.0.0.1:{sentinel_group.sentinels[1].port}"
    for url, reason in ((primary.url, "it is a replica"), (sentinel, "it is a Redis Sentinel")):
        refused = TenantGateway(echo_app(), redis_url=url)
        with pytest.raises(StoreUnavailable, match=reason):
            await refused.startup()
        await refused.services.counters.close()
        result = await asyncio.to_thread(
            run_cli, "serve", "--port", str(free_port()), "--redis-url", url
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], result.stderr


@pytest.mark.slow
async def test_a_tls_service_is_followed_over_tls(
    tls_sentinel_group: SentinelGroup, redis_prefix: str
) -> None:
    """``rediss+sentinel://``: the sentinels, the pipelined decisions and redis-py's clients
    all speak TLS (the URL's ``ssl_ca_certs``), before a failover and after it."""
    counters = RedisCounters(tls_sentinel_group.url, key_prefix=redis_prefix)
    try:
        await counters.ping()
        for _ in range(3):
            assert (await counters.admit(KEY, "01", 100, False)).admitted
        old = tls_sentinel_group.primary()
        with old.client() as client:
            client.execute_command("WAIT", 1, 1000)
        old.kill()

        async def decide() -> None:
            assert (await counters.admit(KEY, "01", 100, False)).used == 4

        assert await _until_answered(decide, 15) < 15
        assert (await counters.read(KEY))["calls"] == 4
        await counters.ping()
    finally:
        await counters.close()
