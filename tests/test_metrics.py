"""``/metrics``: exact counts after real traffic on both stores, the breaker and flush failures
of a Redis cut away, the operator token, the path moved or off, and never metered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from benchmarks.redis_cluster import LocalCluster
from tenant_gateway import TenantGateway
from tenant_gateway.exceptions import ConfigurationError, StoreUnavailable
from tenant_gateway.keys import generate_api_key
from tenant_gateway.serve import build_app

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, Stores, auth, operator_headers, register
from .helpers import assert_problem, gateway_via, proxy_to, usage
from .tcp_proxy import TcpProxy

SEVEN = {"plans": {"seven": {"max_users": 5, "monthly_calls": 7, "burst_per_second": None,
                             "price_cents": 0}}}  # fmt: skip
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient, path: str = "/metrics", **headers: str) -> Samples:
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_counts_after_real_traffic_are_exact(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    gateway = TenantGateway(
        echo_app(), plans=SEVEN, clock=clock, metrics_path="/metrics", **stores.kwargs()
    )
    client = await client_for(gateway)
    tenant = await register(client, plan="seven")
    statuses = [(await client.get("/whoami", headers=auth(tenant))).status_code for _ in range(10)]
    assert statuses == [200] * 7 + [429] * 3
    assert (await client.get("/whoami")).status_code == 401
    unknown = {"X-API-Key": generate_api_key()}
    assert (await client.get("/whoami", headers=unknown)).status_code == 401

    samples = await scrape(client)
    assert value(samples, "tenant_gateway_calls_admitted_total", plan="seven") == 7
    refused = "tenant_gateway_calls_refused_total"
    assert value(samples, refused, reason="quota_exceeded", plan="seven") == 3
    assert value(samples, refused, reason="missing_api_key", plan="") == 1
    assert value(samples, refused, reason="invalid_api_key", plan="") == 1
    assert sum(v for (name, _), v in samples.items() if name == refused) == 5
    assert value(samples, "tenant_gateway_quota_decision_seconds_count") == 10
    assert value(samples, "tenant_gateway_quota_decision_seconds_bucket", le="+Inf") == 10
    assert value(samples, "tenant_gateway_key_cache_misses_total") == 2  # the key, the unknown
    assert value(samples, "tenant_gateway_key_cache_hits_total") == 9
    assert value(samples, "tenant_gateway_key_cache_entries") == 2
    for outcome in ("delivered", "failed", "dropped"):
        assert value(samples, "tenant_gateway_webhook_deliveries_total", outcome=outcome) == 0
    assert value(samples, "tenant_gateway_usage_flush_failures_total", step="counters") == 0
    if stores.name == "real":
        circuit = "tenant_gateway_breaker_state"
        assert value(samples, circuit, breaker="redis", state="closed") == 1
        assert value(samples, circuit, breaker="redis", state="open") == 0
        assert value(samples, "tenant_gateway_postgres_connections_max") == 10
        opened = sum(
            value(samples, "tenant_gateway_postgres_connections", state=state)
            for state in ("busy", "idle")
        )
        assert 1 <= opened <= 10
    else:
        assert not any(name == "tenant_gateway_breaker_state" for name, _ in samples)
    # A process's own numbers too (single-process mode).
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)

    # Scrapes are never metered: neither counted by the gate nor in the tenant's usage.
    await gateway.flush()
    before = await usage(client, tenant)
    assert (before["api_calls"], before["rejected_calls"]) == (7, 3)
    for _ in range(5):
        again = await scrape(client, **auth(tenant))  # a key sent along changes nothing
    await gateway.flush()
    assert await usage(client, tenant) == before
    assert value(again, "tenant_gateway_calls_admitted_total", plan="seven") == 7
    assert value(again, "tenant_gateway_quota_decision_seconds_count") == 10


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    proxy = await proxy_to(redis_url)
    yield proxy
    await proxy.stop()


async def test_a_dead_redis_shows_as_an_open_breaker_and_failed_flushes(
    redis_url: str, redis_prefix: str, redis_proxy: TcpProxy, client_for: ClientFor
) -> None:
    clock = FakeClock()
    gateway = gateway_via(
        redis_url, redis_proxy, redis_prefix, plans=SEVEN, clock=clock, metrics_path="/metrics"
    )
    client = await client_for(gateway)
    tenant = await register(client, plan="seven")
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200  # to flush
    assert value(await scrape(client), "tenant_gateway_usage_flush_lag_seconds") == 0

    redis_proxy.blackhole = True
    redis_proxy.cut()
    for _ in range(3):
        assert (await client.get("/whoami", headers=auth(tenant))).status_code == 503
    with pytest.raises(StoreUnavailable):
        await gateway.flush()
    clock.advance(30)
    samples = await scrape(client)
    refused = "tenant_gateway_calls_refused_total"
    assert value(samples, refused, reason="quota_unavailable", plan="seven") == 3
    assert value(samples, "tenant_gateway_breaker_state", breaker="redis", state="open") == 1
    assert value(samples, "tenant_gateway_breaker_state", breaker="redis", state="closed") == 0
    failures = "tenant_gateway_usage_flush_failures_total"
    assert value(samples, failures, step="counters") == 1  # the call's route tally
    assert value(samples, failures, step="ledger") == 1  # its counters' snapshot
    assert value(samples, failures, step="key_use") == 0  # a memory directory
    assert value(samples, "tenant_gateway_usage_flush_lag_seconds") == 30
    redis_proxy.blackhole = False  # shutdown flushes through it


async def test_metrics_behind_an_operator_token(client_for: ClientFor) -> None:
    gateway = TenantGateway(
        echo_app(),
        admin_jwt_secret=JWT_SECRET,
        metrics_path="/metrics",
        metrics_require_operator=True,
    )
    client = await client_for(gateway)
    tenant = await register(client)
    assert_problem(await client.get("/metrics"), 401, "missing_api_key")
    assert_problem(await client.get("/metrics", headers=auth(tenant)), 403, "forbidden")
    forged = operator_headers(secret="another-secret-of-at-least-32-chars!")
    assert_problem(await client.get("/metrics", headers=forged), 401, "invalid_api_key")
    assert_problem(
        await client.get("/metrics", headers=operator_headers(role="viewer")),
        401,
        "invalid_api_key",
    )
    samples = await scrape(client, **operator_headers())
    assert not any(name == "tenant_gateway_calls_refused_total" for name, _ in samples)
    refused = await client.post("/metrics", headers=operator_headers())
    assert_problem(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == "GET, HEAD"


def test_an_operator_token_needs_operators() -> None:
    with pytest.raises(ConfigurationError, match="admin_jwt_secret"):
        TenantGateway(echo_app(), metrics_path="/metrics", metrics_require_operator=True)
    with pytest.raises(ConfigurationError, match="no metrics to protect: set metrics_path"):
        TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, metrics_require_operator=True)
    with pytest.raises(ConfigurationError, match="metrics_path"):
        TenantGateway(echo_app(), metrics_path="metrics")


async def test_embedded_the_metrics_are_off_unless_asked_for(client_for: ClientFor) -> None:
    """Embedded, the gateway takes no path of the wrapped app's by default: the app's own
    ``/metrics`` answers. Asked for (``metrics_path``), the gateway's metrics answer there,
    ahead of the app's."""

    async def own_metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the_apps_own_metric 1\n")

    app = Starlette(routes=[Route("/metrics", own_metrics)])
    client = await client_for(TenantGateway(app, public_paths=["/metrics"]))
    assert (await client.get("/metrics")).text == "the_apps_own_metric 1\n"
    client = await client_for(
        TenantGateway(app, public_paths=["/metrics"], metrics_path="/metrics")
    )
    samples = parse((await client.get("/metrics")).text)
    assert ("tenant_gateway_calls_admitted_total", frozenset({("plan", "free")})) in samples


def test_serve_answers_metrics_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` owns the app it runs: its metrics are on at ``/metrics`` unless turned off."""
    for name in ("TG_METRICS_PATH", "TG_DATABASE_URL", "TG_REDIS_URL", "TG_PLANS"):
        monkeypatch.delenv(name, raising=False)
    assert build_app().metrics_path == "/metrics"
    monkeypatch.setenv("TG_METRICS_PATH", "")  # --metrics-path ''
    assert build_app().metrics_path == ""


@pytest.mark.parametrize("path", [None, "/internal/metrics"])
async def test_the_metrics_path_moves_or_goes(path: str | None, client_for: ClientFor) -> None:
    gateway = TenantGateway(echo_app(), metrics_path=path)
    client = await client_for(gateway)
    tenant = await register(client)
    assert_problem(await client.get("/metrics"), 401, "missing_api_key")  # the app's path now
    assert (await client.get("/metrics", headers=auth(tenant))).status_code == 404
    await gateway.flush()
    assert (await usage(client, tenant))["api_calls"] == 1
    if path is not None:
        samples = await scrape(client, path)
        assert value(samples, "tenant_gateway_calls_admitted_total", plan="free") == 1


async def test_a_breaker_per_cluster_primary(
    redis_cluster: LocalCluster, cluster_url: str, cluster_prefix: str, client_for: ClientFor
) -> None:
    gateway = TenantGateway(
        echo_app(),
        plans=SEVEN,
        redis_url=cluster_url,
        redis_key_prefix=cluster_prefix,
        metrics_path="/metrics",
    )
    client = await client_for(gateway)
    tenant = await register(client, plan="seven")
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    samples = await scrape(client)
    closed = {
        dict(labels)["breaker"]
        for (name, labels), state in samples.items()
        if name == "tenant_gateway_breaker_state" and ("state", "closed") in labels and state
    }
    assert closed == {f"redis 127.0.0.1:{port}" for port in redis_cluster.ports}
