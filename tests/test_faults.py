"""Reliability under faults (issue 9): health, the Redis circuit breaker and fail modes,
a PostgreSQL outage — with the real servers behind a proxy the test can cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from benchmarks.load import Load, Request
from tenant_gateway import TenantGateway
from tenant_gateway.breaker import Breaker, BreakerState
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.redis.counters import RedisCounters

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, Stores, auth, register
from .helpers import assert_problem, gateway_via, proxy_to, through
from .tcp_proxy import TcpProxy

T = "/api/v1/tenants"
PLANS = {
    "plans": {
        "metered": {
            "max_users": None,
            "monthly_calls": 1000,
            "burst_per_second": None,
            "price_cents": 0,
        },
        "roomy": {  # a quota no load test reaches: a test of an outage, not of the quota
            "max_users": None,
            "monthly_calls": 1_000_000,
            "burst_per_second": None,
            "price_cents": 0,
        },
        "lenient": {
            "max_users": None,
            "monthly_calls": 1000,
            "burst_per_second": None,
            "price_cents": 0,
            "fail_mode": "open",
        },
    }
}


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    proxy = await proxy_to(redis_url)
    yield proxy
    await proxy.stop()


async def test_health_endpoints(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(TenantGateway(echo_app(), **stores.kwargs()))
    live = await client.get("/healthz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    expected = {} if stores.name == "memory" else {"postgres": "ok", "redis": "ok"}
    assert ready.json() == {"status": "ready", "checks": expected}
    assert "ratelimit-policy" not in ready.headers


async def test_readiness_reports_a_dead_redis(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy, client_for: ClientFor
) -> None:
    clock = FakeClock()
    gateway = gateway_via(redis_url, redis_proxy, redis_prefix, clock=clock)
    client = await client_for(gateway)
    redis_proxy.blackhole = True
    redis_proxy.cut()
    response = await client.get("/readyz")
    problem = assert_problem(response, 503, "not_ready")
    assert problem["checks"]["redis"] != "ok"


async def test_a_dead_redis_trips_the_breaker_and_recovery_closes_it(
    redis_url: str,
    redis_prefix: str,
    redis_proxy: TcpProxy,
    client_for: ClientFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    gateway = gateway_via(redis_url, redis_proxy, redis_prefix, plans=PLANS, clock=clock)
    client = await client_for(gateway)
    counters = gateway.services.counters
    assert isinstance(counters, RedisCounters)
    tenant = await register(client, plan="metered")
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200

    redis_proxy.blackhole = True
    redis_proxy.cut()
    for _ in range(3):  # each of these really tries Redis and fails
        assert_problem(await client.get("/whoami", headers=auth(tenant)), 503, "quota_unavailable")
    assert state(counters) is BreakerState.OPEN
    knocks = redis_proxy.accepted
    for _ in range(50):  # while open: refused at once, Redis is not even tried
        refused = await client.get("/whoami", headers=auth(tenant))
        assert_problem(refused, 503, "quota_unavailable")
        assert refused.headers["retry-after"] == "1"
    assert redis_proxy.accepted == knocks
    refusals = [r for r in caplog.records if r.getMessage().startswith("refusing requests")]
    assert len(refusals) == 1  # 53 refused calls, one log line (plus the breaker's own)

    clock.advance(1.1)  # cooldown over: one probe, which fails: open again
    assert_problem(await client.get("/whoami", headers=auth(tenant)), 503, "quota_unavailable")
    assert state(counters) is BreakerState.OPEN
    assert redis_proxy.accepted > knocks

    redis_proxy.blackhole = False
    clock.advance(1.1)
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    assert state(counters) is BreakerState.CLOSED
    usage = (await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["api_calls"] == 2  # refused calls were never admitted


def state(counters: RedisCounters) -> BreakerState:
    return counters.breaker.state


# -- every probe reports how it ended (review #3) --------------------------------------------

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"
KEY = ("tenant_a", "2026-11")


async def _outage(client: Any, tenant: dict[str, Any], proxy: TcpProxy) -> None:
    """Three calls find no Redis (the circuit opens), then Redis is back."""
    proxy.blackhole = True
    proxy.cut()
    for _ in range(3):
        assert_problem(await client.get("/whoami", headers=auth(tenant)), 503, "quota_unavailable")
    proxy.blackhole = False


async def test_a_probe_answered_by_a_server_wide_error_counts_as_a_failure(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy, client_for: ClientFor
) -> None:
    """Redis came back but is still loading its data: its answer to the half-open probe is an
    error reply. That is a failure (open again), not a probe left unanswered that holds the
    circuit half-open with every call refused; the probe after the next cooldown closes it."""
    clock = FakeClock()
    gateway = gateway_via(redis_url, redis_proxy, redis_prefix, plans=PLANS, clock=clock)
    client = await client_for(gateway)
    counters = gateway.services.counters
    assert isinstance(counters, RedisCounters)
    tenant = await register(client, plan="metered")
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    await _outage(client, tenant, redis_proxy)
    assert state(counters) is BreakerState.OPEN

    redis_proxy.answer_instead(b"EVALSHA", LOADING)
    clock.advance(1.1)
    assert_problem(await client.get("/whoami", headers=auth(tenant)), 503, "quota_unavailable")
    assert state(counters) is BreakerState.OPEN
    clock.advance(1.1)
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    assert state(counters) is BreakerState.CLOSED

    redis_proxy.answer_instead(b"EVALSHA", LOADING, times=3)  # as three lost connections
    for _ in range(3):
        assert_problem(await client.get("/whoami", headers=auth(tenant)), 503, "quota_unavailable")
    assert state(counters) is BreakerState.OPEN


async def test_a_probe_answered_by_an_error_about_one_key_closes_the_circuit(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy, client_for: ClientFor
) -> None:
    """An error reply about one command says Redis answers: that call fails, the circuit
    closes and the next call goes through."""
    clock = FakeClock()
    gateway = gateway_via(redis_url, redis_proxy, redis_prefix, plans=PLANS, clock=clock)
    client = await client_for(gateway)
    counters = gateway.services.counters
    assert isinstance(counters, RedisCounters)
    tenant = await register(client, plan="metered")
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    await _outage(client, tenant, redis_proxy)
    wrong_type = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    redis_proxy.answer_instead(b"EVALSHA", wrong_type)
    clock.advance(1.1)
    assert_problem(await client.get("/whoami", headers=auth(tenant)), 503, "quota_unavailable")
    assert state(counters) is BreakerState.CLOSED
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200


class _Ledger:
    """A hydration source that can be down, as PostgreSQL can."""

    def __init__(self) -> None:
        self.down = False

    async def __call__(self, key: tuple[str, str]) -> dict[str, int]:
        if self.down:
            raise StoreUnavailable("PostgreSQL", "postgresql://ledger", "connection refused")
        return {}


async def _counters_after_an_outage(
    redis_url: str, redis_prefix: str, proxy: TcpProxy, clock: FakeClock, ledger: _Ledger
) -> RedisCounters:
    """Counters through ``proxy`` whose circuit an outage opened; Redis is back, the cooldown
    is over: the next call is the probe."""
    counters = RedisCounters(
        through(redis_url, proxy), key_prefix=redis_prefix, hydrate_from=ledger, clock=clock
    )
    proxy.blackhole = True
    proxy.cut()
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            await counters.admit(KEY, "01", None, False)
    assert state(counters) is BreakerState.OPEN
    proxy.blackhole = False
    clock.advance(1.1)
    return counters


async def test_a_probe_whose_ledger_restore_fails_frees_the_circuit(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    """The probe is a flush to a hash Redis lost, and PostgreSQL fails its restore: that says
    nothing against Redis, which answered; once the ledger is back, the flush goes through."""
    clock, ledger = FakeClock(), _Ledger()
    counters = await _counters_after_an_outage(redis_url, redis_prefix, redis_proxy, clock, ledger)
    try:
        ledger.down = True
        with pytest.raises(StoreUnavailable) as failed:
            await counters.add({KEY: {"rejected": 1}})
        assert failed.value.store == "PostgreSQL"
        ledger.down = False
        await counters.add({})  # the batch still owed goes again
        assert (await counters.read(KEY))["rejected"] == 1
        assert (await counters.admit(KEY, "01", None, False)).used == 1
        assert state(counters) is BreakerState.CLOSED
    finally:
        await counters.close()


async def test_a_cancelled_probe_frees_the_circuit(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    clock = FakeClock()
    counters = await _counters_after_an_outage(
        redis_url, redis_prefix, redis_proxy, clock, _Ledger()
    )
    try:
        redis_proxy.stall()
        probe = asyncio.get_running_loop().create_task(counters.read(KEY))
        await asyncio.sleep(0)  # it takes the probe, then waits on Redis
        assert state(counters) is BreakerState.HALF_OPEN
        probe.cancel()  # the request it served was cancelled
        with pytest.raises(asyncio.CancelledError):
            await probe
        redis_proxy.stall(False)
        assert await counters.read(KEY) == {"hydrated": 1}
        assert state(counters) is BreakerState.CLOSED
    finally:
        redis_proxy.stall(False)
        await counters.close()


async def test_a_read_answered_by_a_server_wide_error_is_a_failure(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    """A replica that lost its primary answers a snapshot's read with MASTERDOWN: the read
    fails and counts against the circuit (it does not pass for a hash of another type, left
    out of the snapshot while the circuit is told that Redis is fine)."""
    counters = RedisCounters(
        through(redis_url, redis_proxy), key_prefix=redis_prefix, clock=FakeClock()
    )
    try:
        await counters.read(KEY)
        down = b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
        redis_proxy.answer_instead(b"HGETALL", down + b"\r\n", times=3)
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await counters.snapshots([KEY])
        assert state(counters) is BreakerState.OPEN
    finally:
        await counters.close()


def test_a_probe_that_never_reports_is_given_up_on() -> None:
    """Whatever path a probe takes, the circuit cannot stay half-open for good."""
    clock = FakeClock()
    breaker = Breaker("test", clock, cooldown=1.0, probe_timeout=10.0)
    for _ in range(3):
        breaker.failed()
    clock.advance(1.1)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # one at a time
    clock.advance(9)
    assert not breaker.allow()
    clock.advance(1.1)
    assert breaker.allow()  # the first never reported: another call probes
    breaker.released()
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN


async def test_fail_open_admits_and_reconciles(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy, client_for: ClientFor
) -> None:
    clock = FakeClock()
    gateway = gateway_via(redis_url, redis_proxy, redis_prefix, plans=PLANS, clock=clock)
    client = await client_for(gateway)
    strict = await register(client, plan="metered")
    lenient = await register(client, plan="lenient")  # the plan says: fail open
    for tenant in (strict, lenient):
        assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    redis_proxy.blackhole = True
    redis_proxy.cut()
    during = [(await client.get("/whoami", headers=auth(lenient))).status_code for _ in range(20)]
    assert during == [200] * 20
    assert_problem(await client.get("/whoami", headers=auth(strict)), 503, "quota_unavailable")
    redis_proxy.blackhole = False
    clock.advance(1.1)
    await gateway.flush()  # the in-process counts reach Redis now that it is back
    usage = (await client.get(f"{T}/{lenient['id']}/usage", headers=auth(lenient))).json()
    assert usage["api_calls"] == 21


async def test_a_postgres_outage(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    proxy = await proxy_to(postgres_url)
    clock = FakeClock()
    gateway = TenantGateway(
        echo_app(),
        database_url=through(postgres_url, proxy),
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        admin_jwt_secret=JWT_SECRET,
        clock=clock,
    )
    client = await client_for(gateway)
    try:
        warm = await register(client, plan="professional")
        cold = await register(client, plan="professional")
        assert (await client.get("/whoami", headers=auth(warm))).status_code == 200
        proxy.blackhole = True
        proxy.cut()
        clock.advance(5)  # well past the key cache TTL
        for _ in range(5):  # a known key keeps working
            assert (await client.get("/whoami", headers=auth(warm))).status_code == 200
        assert_problem(await client.get("/whoami", headers=auth(cold)), 503, "service_unavailable")
        assert_problem(
            await client.get(f"{T}/{warm['id']}", headers=auth(warm)), 503, "service_unavailable"
        )
        with pytest.raises(StoreUnavailable):  # the flush fails and keeps its batch
            await gateway.flush()
        proxy.blackhole = False
        clock.advance(2)
        await asyncio.wait_for(gateway.flush(), 10)  # retried without loss
        assert (await client.get("/whoami", headers=auth(cold))).status_code == 200
        ledger = await gateway.services.ledger.read((warm["id"], _period(clock)))
        assert ledger["calls"] == 6
    finally:
        await proxy.stop()


def _period(clock: FakeClock) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m")


async def test_admin_requests_have_a_deadline(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    proxy = await proxy_to(postgres_url)
    gateway = TenantGateway(
        echo_app(),
        database_url=through(postgres_url, proxy),
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        admin_timeout=0.5,
    )
    client: httpx.AsyncClient = await client_for(gateway)
    try:
        tenant = await register(client)
        proxy.stall()  # PostgreSQL stops answering, connections stay open
        response = await client.get(f"{T}/{tenant['id']}/users", headers=auth(tenant))
        assert_problem(response, 503, "service_unavailable")
        assert "0.5 s" in response.json()["detail"]
    finally:
        proxy.stall(False)
        await proxy.stop()


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_redis_dies_and_returns_mid_load(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy, client_for: ClientFor, fail_mode: str
) -> None:
    gateway = gateway_via(
        redis_url, redis_proxy, redis_prefix, plans=PLANS, redis_fail_mode=fail_mode
    )
    client = await client_for(gateway)
    # However long the breaker takes to close on a loaded machine, the load never meets the
    # quota (a 429 would say nothing about the outage).
    tenant = await register(client, plan="roomy")
    load = Load(client, Request("GET", "/whoami", auth(tenant)))
    load.start()
    await load.until(100)
    redis_proxy.blackhole = True
    redis_proxy.cut()
    await load.until(300)
    redis_proxy.blackhole = False
    counters = gateway.services.counters
    assert isinstance(counters, RedisCounters)
    while state(counters) is not BreakerState.CLOSED:  # recovers by itself, no restart
        await load.until(20)
    await load.until(100)
    await load.stop()
    assert set(load.statuses) <= {200, 503}, set(load.statuses)  # never a 500
    # Answers kept coming while Redis was a black hole (until() would have failed otherwise);
    # each waited at most about the 1 s Redis timeout, with room for a loaded machine.
    assert load.slowest < 10.0
    if fail_mode == "closed":
        assert 503 in load.statuses
    else:
        assert 503 not in load.statuses
    await gateway.flush()
    usage = (await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))).json()
    # Exact, but for decisions Redis took whose reply the cut connection lost: those were
    # counted and answered 503 (closed) or counted twice (open). At most one per caller.
    assert 0 <= usage["api_calls"] - load.statuses.count(200) <= 16


async def test_postgres_dies_and_returns_mid_load(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    proxy = await proxy_to(postgres_url)
    gateway = TenantGateway(
        echo_app(),
        plans=PLANS,
        database_url=through(postgres_url, proxy),
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        key_cache_ttl=0.05,  # expire often, so the outage is really felt by the cache
        key_cache_long_ttl=0.05,  # (the subscription to Redis is up: else it would trust longer)
    )
    client = await client_for(gateway)
    try:
        tenant = await register(client, plan="metered")
        load = Load(client, Request("GET", "/whoami", auth(tenant)))
        load.start()
        await load.until(100)
        proxy.blackhole = True
        proxy.cut()
        await load.until(300)
        with pytest.raises(StoreUnavailable):  # the ledger write fails and keeps its batch
            await gateway.flush()
        proxy.blackhole = False
        await load.until(100)
        await load.stop()
        assert set(load.statuses) == {200}  # a known key rides out the outage
        await gateway.flush()
        ledger = await gateway.services.ledger.read((tenant["id"], _period_now()))
        assert ledger["calls"] == len(load.statuses)
    finally:
        await proxy.stop()


def _period_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m")


# -- one tenant's poisoned counters (issue 17, finding 1) ------------------------------------

POISONED_PLANS = {
    "plans": {
        **PLANS["plans"],
        "unlimited": {
            "max_users": None,
            "monthly_calls": None,
            "burst_per_second": None,
            "price_cents": 0,
        },
    }
}


@pytest.mark.parametrize("poison", [str(2**63 - 1), "not a number"])
async def test_a_poisoned_usage_hash_harms_no_other_tenant(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor, poison: str
) -> None:
    """Tenant A's usage hash holds a route tally at the top of Redis's integer range (what an
    import of a hostile ``tg_usage`` row left behind) or no number at all. A's next call makes
    the shared flush refuse that increment. Everyone else's calls, usage and invoices must stay
    exact, the breaker closed, and retried flushes must not count anything twice."""
    gateway = TenantGateway(
        echo_app(),
        plans=POISONED_PLANS,
        database_url=postgres_url,
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        admin_jwt_secret=JWT_SECRET,
    )
    client = await client_for(gateway)
    counters = gateway.services.counters
    assert isinstance(counters, RedisCounters)
    attacker = await register(client, plan="metered")
    metered = await register(client, plan="metered")
    unlimited = await register(client, plan="unlimited")
    assert (await client.get("/whoami", headers=auth(attacker))).status_code == 200
    await gateway.flush()
    period = _period_now()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        name = f"{redis_prefix}usage:{{{attacker['id']}}}:{period}"
        await raw.hset(name, "route|2xx|GET /whoami", poison)
        for tenant in (attacker, metered, unlimited):
            assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
        for _ in range(5):  # each flush meets the bad field again; five > breaker threshold
            await gateway.flush()
        assert state(counters) is BreakerState.CLOSED
        for n in range(1, 4):
            for tenant in (metered, unlimited):
                assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
            await gateway.flush()
            for tenant in (metered, unlimited):
                usage = await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))
                assert usage.status_code == 200, usage.text
                report = usage.json()
                assert report["api_calls"] == 1 + n, report
                assert report["by_route"] == [
                    {"route": "GET /whoami", "calls": 1 + n, "by_status": {"2xx": 1 + n}}
                ]
                invoice = await client.get(
                    f"{T}/{tenant['id']}/billing/invoice", headers=auth(tenant)
                )
                assert invoice.status_code == 200, invoice.text
        ledger = await gateway.services.ledger.read((unlimited["id"], period))
        assert ledger["calls"] == 4 and ledger["route|2xx|GET /whoami"] == 4
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/whoami", headers=auth(attacker))).status_code == 200
    finally:
        await raw.aclose()


async def test_a_corrupt_counter_fails_only_its_own_tenant(
    redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """Quota decisions of concurrent requests share one script call: a tenant whose hash
    cannot be used must not turn the others' calls into 503s nor open the breaker."""
    gateway = TenantGateway(
        echo_app(), plans=PLANS, redis_url=redis_url, redis_key_prefix=redis_prefix
    )
    client = await client_for(gateway)
    counters = gateway.services.counters
    assert isinstance(counters, RedisCounters)
    attacker = await register(client, plan="metered")
    victim = await register(client, plan="metered")
    raw = aioredis.Redis.from_url(redis_url)
    try:
        name = f"{redis_prefix}usage:{{{attacker['id']}}}:{_period_now()}"
        await raw.hset(name, mapping={"hydrated": 1, "calls": "not a number"})
        for _ in range(4):
            responses = await asyncio.gather(
                *(client.get("/whoami", headers=auth(t)) for t in (attacker, victim) * 5)
            )
            assert [r.status_code for r in responses] == [200] * 10
        assert state(counters) is BreakerState.CLOSED
        usage = await client.get(f"{T}/{victim['id']}/usage", headers=auth(victim))
        assert usage.json()["api_calls"] == 20
    finally:
        await raw.aclose()


async def test_each_flush_step_runs_whatever_the_others_did(
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    redis_proxy: TcpProxy,
    client_for: ClientFor,
) -> None:
    """Redis is away: the usage tallies wait, but the keys' last use still reaches PostgreSQL,
    and the tallies arrive once Redis is back."""
    clock = FakeClock()
    gateway = TenantGateway(
        echo_app(),
        plans=POISONED_PLANS,
        database_url=postgres_url,
        redis_url=through(redis_url, redis_proxy),
        redis_key_prefix=redis_prefix,
        admin_jwt_secret=JWT_SECRET,
        clock=clock,
    )
    client = await client_for(gateway)
    tenant = await register(client, plan="unlimited")  # no quota: no Redis on the call
    await gateway.flush()
    redis_proxy.blackhole = True
    redis_proxy.cut()
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    with pytest.raises(StoreUnavailable):
        await gateway.flush()
    keys = await gateway.services.directory.list_keys(tenant["id"])
    assert [key.last_used_at is not None for key in keys] == [True]
    redis_proxy.blackhole = False
    clock.advance(2)  # past the breaker's cooldown
    await gateway.flush()
    usage = await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))
    assert usage.json()["api_calls"] == 1
