"""ASGI plumbing: lifespan relay, websockets, FastAPI dependencies, the public API surface."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse

import tenant_gateway
from tenant_gateway import (
    DEFAULT_PLANS,
    ConfigurationError,
    PlanCatalog,
    Settings,
    Tenant,
    TenantGateway,
    get_current_tenant,
)
from tenant_gateway.exceptions import NoTenantContext

from .apps import echo_app
from .conftest import Stores


def test_public_names_are_pinned() -> None:
    assert set(tenant_gateway.__all__) == {
        "DEFAULT_PLANS",
        "Clock",
        "ConfigurationError",
        "NoTenantContext",
        "Period",
        "Plan",
        "PlanCatalog",
        "Problem",
        "QuotaEvent",
        "Role",
        "Settings",
        "Sleep",
        "StoreUnavailable",
        "Tenant",
        "TenantGateway",
        "TenantGatewayError",
        "TenantStatus",
        "current_tenant",
        "django_routes",
        "get_current_tenant",
        "isolate_table",
        "load_plans",
        "quart_routes",
        "tenant_transaction",
    }
    for name in tenant_gateway.__all__:
        assert getattr(tenant_gateway, name) is not None


def test_a_plan_catalogue_is_taken_as_it_is() -> None:
    """``plans=`` takes the exported ``PlanCatalog`` (the defaults, or one built in code)."""
    custom = PlanCatalog({"solo": DEFAULT_PLANS["free"]})
    assert TenantGateway(echo_app(), plans=DEFAULT_PLANS).services.plans is DEFAULT_PLANS
    assert TenantGateway(echo_app(), plans=custom).services.plans is custom


def test_settings_are_checked_when_made_and_build_the_same_gateway() -> None:
    with pytest.raises(ConfigurationError, match="admin_prefix"):
        Settings(admin_prefix="api")
    with pytest.raises(ConfigurationError, match="signup_plans"):
        Settings(signup_plans=frozenset({"gold"}))
    settings = Settings(admin_prefix="/admin", key_cache_size=7)
    gateway = TenantGateway(echo_app(), settings)
    assert gateway.settings is settings and gateway.services.settings is settings
    assert TenantGateway(echo_app(), admin_prefix="/admin", key_cache_size=7).settings == settings
    with pytest.raises(ConfigurationError, match="not both"):
        TenantGateway(echo_app(), settings, key_cache_size=8)


def test_lifespan_events_reach_the_wrapped_app(stores: Stores) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    gateway = TenantGateway(Starlette(lifespan=lifespan), **stores.kwargs())
    with TestClient(gateway) as client:
        assert events == ["app startup"]
        register = client.post(
            "/api/v1/tenants/register", json={"name": "L", "admin_email": "l@l.io"}
        )
        assert register.status_code == 201
    assert events == ["app startup", "app shutdown"]


def test_app_without_lifespan_support(stores: Stores) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("lifespan not supported")

    with TestClient(TenantGateway(bare, **stores.kwargs())) as client:
        assert (
            client.post(
                "/api/v1/tenants/register", json={"name": "L", "admin_email": "l@l.io"}
            ).status_code
            == 201
        )


def test_websockets_are_authenticated(stores: Stores) -> None:
    with TestClient(TenantGateway(echo_app(), **stores.kwargs())) as client:
        tenant = client.post(
            "/api/v1/tenants/register", json={"name": "W", "admin_email": "w@w.io"}
        ).json()
        with client.websocket_connect("/ws", headers={"X-API-Key": tenant["api_key"]}) as ws:
            assert ws.receive_json() == {"tenant": tenant["id"]}
        with pytest.raises(WebSocketDenialResponse) as refused:  # no key: an HTTP denial
            with client.websocket_connect("/ws") as ws:
                ws.receive_json()
        assert refused.value.status_code == 401
        assert refused.value.json()["code"] == "missing_api_key"
        usage = client.get(
            f"/api/v1/tenants/{tenant['id']}/usage", headers={"X-API-Key": tenant["api_key"]}
        ).json()
        assert usage["api_calls"] == 1


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/me")
    def me(tenant: Annotated[Tenant, Depends(get_current_tenant)]) -> dict[str, str]:
        return {"id": tenant.id, "plan": tenant.plan}

    @api.get("/me-async")
    async def me_async(tenant: Annotated[Tenant, Depends(get_current_tenant)]) -> dict[str, str]:
        return {"id": tenant.id}

    return api


def test_get_current_tenant_as_a_fastapi_dependency(stores: Stores) -> None:
    with TestClient(TenantGateway(fastapi_app(), **stores.kwargs())) as client:
        tenant = client.post(
            "/api/v1/tenants/register", json={"name": "F", "admin_email": "f@f.io"}
        ).json()
        headers = {"Authorization": f"Bearer {tenant['api_key']}"}
        assert client.get("/me", headers=headers).json() == {"id": tenant["id"], "plan": "free"}
        assert client.get("/me-async", headers=headers).json() == {"id": tenant["id"]}
        assert client.get("/me").status_code == 401
        usage = client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=headers).json()
        assert [r["route"] for r in usage["by_route"]] == ["GET /me", "GET /me-async"]


def test_get_current_tenant_outside_a_request() -> None:
    with pytest.raises(NoTenantContext):
        get_current_tenant()


async def test_websocket_refusal_without_the_denial_extension(stores: Stores) -> None:
    """Servers without ``websocket.http.response`` get a close with 1008 before accept."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    gateway = TenantGateway(echo_app(), **stores.kwargs())
    await gateway.startup()
    try:
        scope = {"type": "websocket", "path": "/ws", "headers": [], "extensions": {}}
        await gateway(scope, receive, send)
    finally:
        await gateway.shutdown()
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "missing_api_key"}]


def test_wrapped_app_startup_failure_is_reported_not_masked(stores: Stores) -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the app cannot start")
        yield

    gateway = TenantGateway(Starlette(lifespan=lifespan), **stores.kwargs())
    with pytest.raises(RuntimeError, match="cannot start"), TestClient(gateway):
        pass
