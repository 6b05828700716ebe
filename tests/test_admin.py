"""The admin sub-app: registration, users and seats, plan changes, usage, access rules."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tenant_gateway import TenantGateway

from .apps import echo_app
from .conftest import (
    JWT_SECRET,
    REDIS_URL,
    ClientFor,
    FakeClock,
    Stores,
    auth,
    operator_headers,
    register,
)
from .helpers import assert_problem

T = "/api/v1/tenants"


def gateway(stores: Stores, **kwargs: Any) -> TenantGateway:
    return TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, **stores.kwargs(), **kwargs)


async def test_register_answers_the_tenant_and_a_key_once(
    stores: Stores, client_for: ClientFor
) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client, plan="enterprise", max_users=100)
    assert tenant["id"].startswith("tenant_") and tenant["api_key"].startswith("tk_")
    assert (
        tenant["status"] == "active"
        and tenant["plan"] == "enterprise"
        and tenant["max_users"] == 100
    )
    assert tenant["created_at"].endswith("Z")
    fetched = await client.get(f"{T}/{tenant['id']}", headers=auth(tenant))
    assert fetched.status_code == 200
    assert "api_key" not in fetched.json()
    assert fetched.json() == {k: v for k, v in tenant.items() if k != "api_key"}


async def test_users_and_seat_limit(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client, max_users=3)  # free allows 5; the tenant caps at 3
    users = f"{T}/{tenant['id']}/users"
    for n in range(2):
        created = await client.post(
            users, json={"email": f"u{n}@acme.com", "role": "developer"}, headers=auth(tenant)
        )
        assert created.status_code == 201, created.text
        assert set(created.json()) == {"id", "email", "role", "created_at"}
    assert_problem(
        await client.post(
            users, json={"email": "u9@acme.com", "role": "viewer"}, headers=auth(tenant)
        ),
        403,
        "user_limit_reached",
    )
    listed = (await client.get(users, headers=auth(tenant))).json()
    assert [u["email"] for u in listed] == ["admin@acme.com", "u0@acme.com", "u1@acme.com"]
    usage = (await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["users"] == 3 and usage["max_users"] == 3


async def test_duplicate_email_is_409_case_insensitively(
    stores: Stores, client_for: ClientFor
) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    users = f"{T}/{tenant['id']}/users"
    assert (
        await client.post(users, json={"email": "dev@acme.com"}, headers=auth(tenant))
    ).status_code == 201
    assert_problem(
        await client.post(users, json={"email": "DEV@acme.com"}, headers=auth(tenant)),
        409,
        "user_exists",
    )
    assert_problem(
        await client.post(users, json={"email": "admin@acme.com"}, headers=auth(tenant)),
        409,
        "user_exists",
    )


async def test_concurrent_user_additions_respect_the_seat_limit(
    stores: Stores, client_for: ClientFor
) -> None:
    import asyncio

    # all twelve at once: above the per-tenant cap of concurrent admin requests (4 by default)
    client = await client_for(gateway(stores, admin_tenant_concurrency=12))
    tenant = await register(client)  # free: 5 seats, admin holds one
    users = f"{T}/{tenant['id']}/users"
    responses = await asyncio.gather(
        *(
            client.post(users, json={"email": f"c{n}@acme.com"}, headers=auth(tenant))
            for n in range(12)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 4 and statuses.count(403) == 8
    assert len((await client.get(users, headers=auth(tenant))).json()) == 5


async def test_plan_change_keeps_the_months_count(stores: Stores, client_for: ClientFor) -> None:
    plans = {
        "plans": {
            "small": {
                "max_users": 5,
                "monthly_calls": 5,
                "burst_per_second": None,
                "price_cents": 0,
            },
            "big": {
                "max_users": 50,
                "monthly_calls": 8,
                "burst_per_second": None,
                "price_cents": 100,
            },
        }
    }
    client = await client_for(gateway(stores, plans=plans))
    tenant = await register(client, plan="small")
    statuses = [(await client.get("/whoami", headers=auth(tenant))).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    changed = await client.put(
        f"{T}/{tenant['id']}/plan", json={"plan": "big"}, headers=auth(tenant)
    )
    assert changed.status_code == 200 and changed.json()["plan"] == "big"
    after = [(await client.get("/whoami", headers=auth(tenant))) for _ in range(4)]
    assert [r.status_code for r in after] == [200, 200, 200, 429]
    assert after[0].headers["ratelimit"].startswith('"monthly";r=2;')
    usage = (await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))).json()
    assert usage["api_calls"] == 8 and usage["limit"] == 8 and usage["rejected_calls"] == 2


async def put_plan(
    client: httpx.AsyncClient,
    tenant: dict[str, Any],
    plan: str,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.put(
        f"{T}/{tenant['id']}/plan", json={"plan": plan}, headers=headers or auth(tenant)
    )


async def plan_state(gw: TenantGateway, tenant_id: str) -> tuple[str, list[Any], list[Any]]:
    """What a plan change writes: the tenant's plan, its plan history, its audit trail."""
    directory = gw.services.directory
    current = await directory.get_tenant(tenant_id)
    assert current is not None
    history = await directory.plan_history(tenant_id)
    return current.plan, history, await directory.list_audit(tenant_id, limit=500, before=None)


async def test_plan_changes_are_rate_limited_per_tenant(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    """Flipping plans in a loop (each change a transaction and a plan-history row): 10 an
    hour per tenant by default. The 11th is 429 rate_limited with Retry-After and writes
    nothing (plan, history, audit); so is a bad body past the limit. Another tenant and an
    operator are not limited. In process (memory) the window runs on the injected clock, and
    the tenant may change again exactly when Retry-After says; on Redis it is ``limits``'
    moving window on the wall clock (see the next test)."""
    gw = gateway(stores, clock=clock)
    client = await client_for(gw)
    tenant, other = await register(client), await register(client)
    for plan in ["professional", "free"] * 5:
        clock.advance(1)
        answer = await put_plan(client, tenant, plan)
        assert answer.status_code == 200 and answer.json()["plan"] == plan, answer.text
    before = await plan_state(gw, tenant["id"])
    assert before[0] == "free" and len(before[1]) == 11  # registration + 10 changes
    refused = await put_plan(client, tenant, "professional")
    assert_problem(refused, 429, "rate_limited")
    retry = int(refused.headers["retry-after"])
    if stores.name == "memory":
        assert retry == 3600 - 9  # the first change, 9 s before, leaves the window then
    else:
        assert 3500 < retry <= 3600
    bad_body = await client.put(f"{T}/{tenant['id']}/plan", content=b"{", headers=auth(tenant))
    assert_problem(bad_body, 429, "rate_limited")
    assert await plan_state(gw, tenant["id"]) == before

    assert (await put_plan(client, other, "professional")).status_code == 200
    by_operator = await put_plan(client, tenant, "professional", operator_headers())
    assert by_operator.status_code == 200 and by_operator.json()["plan"] == "professional"
    assert_problem(await put_plan(client, tenant, "free"), 429, "rate_limited")
    if stores.name == "memory":
        clock.advance(retry - 1)
        assert_problem(await put_plan(client, tenant, "free"), 429, "rate_limited")
        clock.advance(1)
        again = await put_plan(client, tenant, "free")
        assert again.status_code == 200 and again.json()["plan"] == "free"
        assert_problem(await put_plan(client, tenant, "professional"), 429, "rate_limited")


async def test_the_plan_change_limit_is_shared_by_every_process(
    postgres_url: str, redis_prefix: str, client_for: ClientFor, clock: FakeClock
) -> None:
    """Two gateway processes on one Redis count one window per tenant."""
    stores = Stores("real", postgres_url, REDIS_URL, redis_prefix)
    first = await client_for(gateway(stores, clock=clock, plan_change_rate="3/hour"))
    second = await client_for(gateway(stores, clock=clock, plan_change_rate="3/hour"))
    tenant = await register(first)
    for client, plan in ((first, "professional"), (second, "free"), (first, "enterprise")):
        assert (await put_plan(client, tenant, plan)).status_code == 200
    for client in (second, first):
        assert_problem(await put_plan(client, tenant, "free"), 429, "rate_limited")
    fetched = await second.get(f"{T}/{tenant['id']}", headers=auth(tenant))
    assert fetched.json()["plan"] == "enterprise"


async def test_the_plan_change_limit_can_be_turned_off(
    client_for: ClientFor, clock: FakeClock
) -> None:
    client = await client_for(TenantGateway(echo_app(), clock=clock, plan_change_rate=None))
    tenant = await register(client)
    for plan in ["professional", "free"] * 8:
        assert (await put_plan(client, tenant, plan)).status_code == 200


async def test_downgrade_below_current_users_is_409(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client, plan="professional")
    for n in range(5):  # admin + 5 = 6 users; free allows 5
        await client.post(
            f"{T}/{tenant['id']}/users", json={"email": f"d{n}@acme.com"}, headers=auth(tenant)
        )
    refused = await client.put(
        f"{T}/{tenant['id']}/plan", json={"plan": "free"}, headers=auth(tenant)
    )
    assert_problem(refused, 409, "too_many_users")
    assert (await client.get(f"{T}/{tenant['id']}", headers=auth(tenant))).json()[
        "plan"
    ] == "professional"
    assert_problem(
        await client.put(
            f"{T}/{tenant['id']}/plan", json={"plan": "platinum"}, headers=auth(tenant)
        ),
        422,
        "validation_error",
    )


async def test_another_tenants_resources_are_404(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    a = await register(client)
    b = await register(client)
    for method, path, body in [
        ("GET", "", None),
        ("GET", "/users", None),
        ("POST", "/users", {"email": "x@acme.com"}),
        ("GET", "/usage", None),
        ("PUT", "/plan", {"plan": "enterprise"}),
        ("POST", "/suspend", None),
    ]:
        response = await client.request(method, f"{T}/{b['id']}{path}", json=body, headers=auth(a))
        assert_problem(response, 404, "not_found")
        missing = await client.request(
            method, f"{T}/tenant_missing{path}", json=body, headers=auth(a)
        )
        assert missing.json() == response.json()
    assert (await client.get(f"{T}/{b['id']}", headers=auth(b))).json()["plan"] == "free"
    assert len((await client.get(f"{T}/{b['id']}/users", headers=auth(b))).json()) == 1


async def test_operator_token(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    a = await register(client)
    assert (await client.get(f"{T}/{a['id']}", headers=operator_headers())).status_code == 200
    # the page starting at a: the session's database holds other tests' tenants, more than a
    # page of them, and no other id starts with all but a's last character
    after_a = await client.get(
        f"{T}/", params={"after": a["id"][:-1], "limit": 1}, headers=operator_headers()
    )
    assert [t["id"] for t in after_a.json()["items"]] == [a["id"]]
    assert_problem(await client.get(f"{T}/", headers=auth(a)), 403, "forbidden")
    assert_problem(await client.post(f"{T}/{a['id']}/suspend", headers=auth(a)), 403, "forbidden")
    for bad in (
        operator_headers(secret="wrong-secret-wrong-secret-wrong!!"),
        operator_headers(role="tenant"),
        operator_headers(exp=1_000_000_000),
        {"Authorization": "Bearer not.a.jwt"},
    ):
        assert_problem(await client.get(f"{T}/{a['id']}", headers=bad), 401, "invalid_api_key")


async def test_closed_signup_needs_an_operator(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores, allow_signup=False))
    body = {"name": "X", "admin_email": "a@x.io"}
    assert_problem(await client.post(f"{T}/register", json=body), 401, "missing_api_key")
    assert (
        await client.post(f"{T}/register", json=body, headers=operator_headers())
    ).status_code == 201


async def test_usage_periods(stores: Stores, client_for: ClientFor, clock: FakeClock) -> None:
    client = await client_for(gateway(stores, clock=clock))
    tenant = await register(client)
    await client.get("/whoami", headers=auth(tenant))
    usage = f"{T}/{tenant['id']}/usage"
    current = (await client.get(usage, headers=auth(tenant))).json()
    assert current["period"] == "2026-11" and current["api_calls"] == 1
    assert current["resets_at"] == "2026-12-01T00:00:00Z" and current["limit"] == 1000
    past = (await client.get(usage, params={"period": "2025-01"}, headers=auth(tenant))).json()
    assert past["api_calls"] == 0 and past["by_day"] == [] and past["remaining"] == 1000
    for bad in ("2026-12", "2026-13", "26-11", "2026-1", "x", ""):
        assert_problem(
            await client.get(usage, params={"period": bad}, headers=auth(tenant)),
            422,
            "validation_error",
        )


async def test_admin_calls_are_not_metered(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    for _ in range(15):  # beyond the burst of 10: admin is not limited
        response = await client.get(f"{T}/{tenant['id']}", headers=auth(tenant))
        assert response.status_code == 200 and "ratelimit" not in response.headers
    assert (await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))).json()[
        "api_calls"
    ] == 0


async def test_openapi_document(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    document = (await client.get(f"{T}/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    from starlette.routing import Mount, Route

    gateway_app = gateway(stores).admin_app
    (mount,) = [r for r in gateway_app.routes if isinstance(r, Mount)]
    served = {
        (route.path, method)
        for route in mount.routes
        if isinstance(route, Route) and route.path != "/openapi.json"
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert served == documented


@pytest.mark.parametrize(("path", "status"), [("/nope/a/b/c", 404), ("/", 405)])
async def test_unknown_admin_routes_are_problems(
    stores: Stores, client_for: ClientFor, path: str, status: int
) -> None:
    """No route: 404; a route without that method (``/`` lists tenants, GET only): 405."""
    client: httpx.AsyncClient = await client_for(gateway(stores))
    response = await client.delete(f"{T}{path}")
    assert response.headers["content-type"] == "application/problem+json"
    assert response.status_code == status
    assert response.json()["code"] == ("not_found" if status == 404 else "method_not_allowed")
    assert ("allow" in response.headers) is (status == 405)


async def test_a_405_names_every_method_the_path_answers(
    stores: Stores, client_for: ClientFor
) -> None:
    """RFC 9110: a 405 carries ``Allow``, listing the methods of every route on the path (here
    one route per method), and the methods listed do answer."""
    client: httpx.AsyncClient = await client_for(gateway(stores))
    tenant = await register(client)
    path = f"{T}/{tenant['id']}"
    response = await client.post(path, headers=auth(tenant))
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD, PATCH"
    assert response.json()["detail"] == "This path answers DELETE, GET, HEAD, PATCH."
    assert (await client.get(path, headers=auth(tenant))).status_code == 200
