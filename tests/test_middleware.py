"""TenantGateway over ASGI: authentication, refusals, headers (docs/plans.md), context."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tenant_gateway import TenantGateway, current_tenant
from tenant_gateway.keys import generate_api_key

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, Stores, auth, operator_headers, register
from .helpers import assert_problem


def gateway(stores: Stores, clock: FakeClock | None = None, **kwargs: Any) -> TenantGateway:
    if clock is not None:
        kwargs["clock"] = clock
    return TenantGateway(echo_app(), **stores.kwargs(), **kwargs)


async def test_missing_key(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    response = await client.get("/whoami")
    assert_problem(response, 401, "missing_api_key")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(
        await client.get("/whoami", headers={"Authorization": "Bearer "}), 401, "missing_api_key"
    )


@pytest.mark.parametrize(
    "header",
    [
        {"Authorization": "Bearer tk_nope"},
        {"Authorization": "Bearer " + "x" * 5000},
        {"X-API-Key": "tk_" + "A" * 38},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
async def test_malformed_keys(
    stores: Stores, client_for: ClientFor, header: dict[str, str]
) -> None:
    client = await client_for(gateway(stores))
    expected = (
        "missing_api_key"
        if header.get("Authorization", "").startswith("Basic")
        else "invalid_api_key"
    )
    assert_problem(await client.get("/whoami", headers=header), 401, expected)


async def test_unknown_well_formed_key(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    response = await client.get("/whoami", headers={"X-API-Key": generate_api_key()})
    assert_problem(response, 401, "invalid_api_key")


async def test_tenant_reaches_the_app_three_ways(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    for headers in (
        auth(tenant),
        {"X-API-Key": tenant["api_key"]},
        {"authorization": "bearer " + tenant["api_key"]},
    ):
        response = await client.get("/whoami", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "scope_state": tenant["id"],
            "context_var": tenant["id"],
            "get_current_tenant": tenant["id"],
        }
    assert current_tenant.get() is None  # reset after the request


async def test_suspended_tenant(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores, admin_jwt_secret=JWT_SECRET))
    tenant = await register(client)
    response = await client.post(
        f"/api/v1/tenants/{tenant['id']}/suspend", headers=operator_headers()
    )
    assert response.status_code == 200 and response.json()["status"] == "suspended"
    assert_problem(await client.get("/whoami", headers=auth(tenant)), 403, "tenant_suspended")
    await client.post(f"/api/v1/tenants/{tenant['id']}/resume", headers=operator_headers())
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200


async def test_rate_limit_headers_and_monthly_quota(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    plans = {
        "plans": {
            "tiny": {"max_users": 5, "monthly_calls": 3, "burst_per_second": None, "price_cents": 0}
        }
    }
    client = await client_for(gateway(stores, clock, plans=plans))
    tenant = await register(client, plan="tiny")
    seconds_left = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() - clock())
    for remaining in (2, 1, 0):
        response = await client.get("/whoami", headers=auth(tenant))
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"monthly";q=3'
        assert response.headers["ratelimit"] == f'"monthly";r={remaining};t={seconds_left}'
    refused = await client.get("/whoami", headers=auth(tenant))
    assert_problem(refused, 429, "quota_exceeded")
    assert refused.headers["retry-after"] == str(seconds_left)
    assert refused.headers["ratelimit"] == f'"monthly";r=0;t={seconds_left}'
    usage = (await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["api_calls"] == 3 and usage["rejected_calls"] == 1 and usage["remaining"] == 0
    # the next calendar month starts a fresh quota
    clock.set(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    fresh = await client.get("/whoami", headers=auth(tenant))
    assert fresh.status_code == 200 and fresh.headers["ratelimit"].startswith('"monthly";r=2;')


async def test_first_call_on_free_plan_shows_999(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    response = await client.get("/whoami", headers=auth(tenant))
    assert response.headers["ratelimit-policy"] == '"burst";q=10;w=1, "monthly";q=1000'
    assert response.headers["ratelimit"].startswith('"monthly";r=999;t=')


async def test_a_plan_without_limits_sends_no_rate_limit_headers(
    stores: Stores, client_for: ClientFor
) -> None:
    unlimited = {"max_users": None, "monthly_calls": None, "burst_per_second": None}
    plans = {"plans": {"open": {**unlimited, "price_cents": 0}}}
    client = await client_for(gateway(stores, plans=plans))
    tenant = await register(client, plan="open")
    response = await client.get("/whoami", headers=auth(tenant))
    assert response.status_code == 200
    assert "ratelimit-policy" not in response.headers  # an empty list is an absent field
    assert "ratelimit" not in response.headers


async def test_burst_limit(stores: Stores, client_for: ClientFor, clock: FakeClock) -> None:
    client = await client_for(gateway(stores, clock))  # every call in the same second
    tenant = await register(client)  # free: 10 per second
    responses = [await client.get("/whoami", headers=auth(tenant)) for _ in range(11)]
    assert [r.status_code for r in responses[:10]] == [200] * 10
    refused = assert_problem(responses[10], 429, "rate_limited")
    assert refused["detail"]
    assert int(responses[10].headers["retry-after"]) >= 1
    usage = (await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["api_calls"] == 10 and usage["rejected_calls"] == 1


async def test_burst_limit_in_a_window_shared_on_redis(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """``burst_storage`` on Redis: two gateways (as two processes would) draw on one window."""
    shared: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "redis_key_prefix": redis_prefix,
        "burst_storage": "async+" + redis_url,
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


async def test_a_shared_burst_window_that_is_down(stores: Stores, client_for: ClientFor) -> None:
    """Its Redis unreachable: 503 quota_unavailable, or admitted on a fail-open plan."""
    nothing = "async+redis://127.0.0.1:1/0"
    closed = await client_for(gateway(stores, burst_storage=nothing))
    tenant = await register(closed)
    assert_problem(await closed.get("/whoami", headers=auth(tenant)), 503, "quota_unavailable")
    lenient = await client_for(gateway(stores, burst_storage=nothing, redis_fail_mode="open"))
    tenant = await register(lenient)
    assert (await lenient.get("/whoami", headers=auth(tenant))).status_code == 200


async def test_quota_exact_under_1100_concurrent_requests(
    stores: Stores, client_for: ClientFor
) -> None:
    """In-process concurrency (the HTTP version, with >= 50 in flight, is in test_server.py)."""
    plans = {
        "plans": {
            "free": {
                "max_users": 5,
                "monthly_calls": 1000,
                "burst_per_second": None,
                "price_cents": 0,
            }
        }
    }
    client = await client_for(gateway(stores, plans=plans))
    tenant = await register(client)
    responses = await asyncio.gather(
        *(client.get("/whoami", headers=auth(tenant)) for _ in range(1100))
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1000 and statuses.count(429) == 100
    remaining = sorted(
        int(r.headers["ratelimit"].split("r=")[1].split(";")[0])
        for r in responses
        if r.status_code == 200
    )
    assert remaining == list(range(1000))  # every admitted call saw a distinct count
    usage = (await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["api_calls"] == 1000 and usage["rejected_calls"] == 100


async def test_public_paths_are_neither_authenticated_nor_metered(
    stores: Stores, client_for: ClientFor
) -> None:
    client = await client_for(gateway(stores, public_paths=["/public"]))
    response = await client.get("/public")
    assert response.status_code == 200 and response.json() == {"tenant": False}
    assert "ratelimit-policy" not in response.headers


async def test_body_limit(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores, max_body_bytes=100))
    tenant = await register(client)
    assert (await client.post("/echo", content=b"x" * 100, headers=auth(tenant))).json() == {
        "bytes": 100
    }
    assert_problem(
        await client.post("/echo", content=b"x" * 101, headers=auth(tenant)),
        413,
        "payload_too_large",
    )

    async def chunks() -> Any:  # no Content-Length: counted while streaming
        for _ in range(5):
            yield b"y" * 50

    assert_problem(
        await client.post("/echo", content=chunks(), headers=auth(tenant)), 413, "payload_too_large"
    )


async def test_body_limit_without_content_length_over_http2(
    stores: Stores, client_for: ClientFor
) -> None:
    """HTTP/2 frames a body without Content-Length: the gateway counts it as it streams."""
    gw = gateway(stores, max_body_bytes=100)
    tenant = await register(await client_for(gw))
    sent = await call(gw, tenant["api_key"], [], [b"z" * 60, b"z" * 60], http_version="2")
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert b"payload_too_large" in sent[1]["body"]


async def call(
    gw: TenantGateway,
    key: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    http_version: str = "1.1",
) -> list[dict[str, Any]]:
    """One raw ASGI POST /echo with these extra headers and body chunks."""
    sent: list[dict[str, Any]] = []
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": http_version,
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {key}".encode()), *headers],
    }
    await gw(scope, receive, send)  # type: ignore[arg-type]
    return sent


async def test_a_length_beside_a_transfer_encoding_is_not_trusted(
    stores: Stores, client_for: ClientFor
) -> None:
    """A server that accepts both frames by the encoding: the body is counted as it streams."""
    gw = gateway(stores, max_body_bytes=100)
    tenant = await register(await client_for(gw))
    both = [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]
    sent = await call(gw, tenant["api_key"], both, [b"z" * 60, b"z" * 60])
    assert sent[0]["status"] == 413


async def test_a_content_length_of_any_size_is_answered(
    stores: Stores, client_for: ClientFor
) -> None:
    gw = gateway(stores, max_body_bytes=100)
    tenant = await register(await client_for(gw))
    huge = [(b"content-length", b"9" * 5000)]
    assert (await call(gw, tenant["api_key"], huge, [b"x"]))[0]["status"] == 413
    padded = [(b"content-length", b"0" * 5000 + b"3")]  # leading zeros: 3 bytes
    assert (await call(gw, tenant["api_key"], padded, [b"abc"]))[0]["status"] == 200


async def test_usage_by_route_template_and_status(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    client = await client_for(gateway(stores, clock))
    tenant = await register(client, plan="enterprise")
    for item in range(20):
        assert (await client.get(f"/items/{item}", headers=auth(tenant))).status_code == 200
    await client.get("/fail", headers=auth(tenant))
    await client.get("/no/such/route", headers=auth(tenant))
    usage = (await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))).json()
    routes = {entry["route"]: entry for entry in usage["by_route"]}
    assert routes["GET /items/{item_id}"] == {
        "route": "GET /items/{item_id}",
        "calls": 20,
        "by_status": {"2xx": 20},
    }
    assert routes["GET /fail"]["by_status"] == {"5xx": 1}
    assert routes["GET (unmatched)"]["by_status"] == {"4xx": 1}
    assert usage["api_calls"] == 22
    assert usage["by_day"] == [
        {"date": "2026-11-10", "api_calls": 22, "rejected_calls": 0}  # the injected clock's day
    ]


async def test_a_route_whose_path_is_not_a_string_counts_as_unmatched(
    stores: Stores, client_for: ClientFor
) -> None:
    """An app's own route type may carry any ``path`` (here an unhashable list): the call is
    answered and tallied, never a 500 from the usage tally."""

    class OddRoute:
        path = ["not", "a", "template"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = OddRoute()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = await client_for(TenantGateway(app, **stores.kwargs()))
    tenant = await register(client, plan="enterprise")
    assert (await client.get("/anything", headers=auth(tenant))).status_code == 200
    usage = (await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["by_route"] == [{"route": "GET (unmatched)", "calls": 1, "by_status": {"2xx": 1}}]


async def test_other_scopes_pass_through(stores: Stores) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await TenantGateway(app, **stores.kwargs())({"type": "custom"}, None, None)  # type: ignore[arg-type]
    assert seen == ["custom"]


async def test_redis_outage_is_503_quota_unavailable_and_recovers(
    redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    from urllib.parse import urlsplit

    from .tcp_proxy import TcpProxy

    target = urlsplit(redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    proxied = f"redis://127.0.0.1:{proxy.port}{target.path}"
    client = await client_for(
        TenantGateway(echo_app(), redis_url=proxied, redis_key_prefix=redis_prefix)
    )
    tenant = await register(client)
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    await proxy.stop()
    refused = await client.get("/whoami", headers=auth(tenant))
    assert_problem(refused, 503, "quota_unavailable")
    assert refused.headers["retry-after"] == "1"
    assert_problem(
        await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant)),
        503,
        "service_unavailable",
    )
    await proxy.start()  # same port: the gateway recovers without a restart
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200
    usage = (await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["api_calls"] == 2
    await proxy.stop()
