"""The gateway around each framework's own app: usage by route template, the route hook, and
public path prefixes (FastAPI's documentation made public in one line)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Message, Scope

from tenant_gateway import ConfigurationError, TenantGateway

from .conftest import ClientFor, Stores, auth, register
from .framework_apps import APPS, ROUTES, fastapi_app, raw_app
from .helpers import assert_problem


async def by_route(client: httpx.AsyncClient, tenant: dict[str, Any]) -> dict[str, Any]:
    """The usage report's routes: {route: {status class: calls}}."""
    usage = await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))
    assert usage.status_code == 200, usage.text
    return {entry["route"]: entry["by_status"] for entry in usage.json()["by_route"]}


async def call_routes(client: httpx.AsyncClient, tenant: dict[str, Any]) -> None:
    """Three calls of the item route, one echo, one path no route takes."""
    for item in (1, 2, 3):
        answer = await client.get(f"/items/{item}", headers=auth(tenant))
        assert answer.status_code == 200, answer.text
        if answer.json():  # the raw app answers {}
            assert answer.json() == {"id": item, "tenant": tenant["id"]}
    echo = await client.post("/echo", content=b"12345", headers=auth(tenant))
    assert echo.status_code == 200 and echo.json() == {"bytes": 5}, echo.text
    assert (await client.get("/no/such/route", headers=auth(tenant))).status_code == 404


@pytest.mark.parametrize("framework", sorted(APPS))
async def test_usage_by_route_template_in_each_framework(
    framework: str, stores: Stores, client_for: ClientFor
) -> None:
    """Starlette and FastAPI (``scope["route"]``), Litestar (``scope["path_template"]``), Django
    (``django_routes`` middleware), Quart (``quart_routes``), a raw app (its own template in
    ``scope["path_template"]``): each call is counted under the route the app matched."""
    client = await client_for(TenantGateway(APPS[framework](), **stores.kwargs()))
    tenant = await register(client, plan="enterprise")
    await call_routes(client, tenant)
    assert await by_route(client, tenant) == {
        f"GET {ROUTES[framework]}": {"2xx": 3},
        "POST /echo": {"2xx": 1},
        "GET (unmatched)": {"4xx": 1},
    }


async def test_an_app_of_another_framework_under_a_starlette_mount(
    stores: Stores, client_for: ClientFor
) -> None:
    """Litestar mounted in Starlette: the mount's template, then the template Litestar left."""
    outer = Starlette(routes=[Mount("/v1/{tier}", app=APPS["litestar"]())])
    client = await client_for(TenantGateway(outer, **stores.kwargs()))
    tenant = await register(client, plan="enterprise")
    for tier in ("gold", "silver"):
        assert (await client.get(f"/v1/{tier}/items/7", headers=auth(tenant))).status_code == 200
    assert await by_route(client, tenant) == {"GET /v1/{tier}/items/{item_id}": {"2xx": 2}}


async def test_route_of_hook_names_the_route(stores: Stores, client_for: ClientFor) -> None:
    """For an app whose route the gateway cannot read: ``route_of(scope)`` answers (None:
    unmatched), in place of the scope's own keys. A hook that raises counts as unmatched."""

    def route_of(scope: Scope) -> str | None:
        if scope["path"] == "/echo":
            raise RuntimeError("the hook's own bug")
        return "/items/{n}" if scope["path"].startswith("/items/") else None

    gateway = TenantGateway(raw_app(), route_of=route_of, **stores.kwargs())
    client = await client_for(gateway)
    tenant = await register(client, plan="enterprise")
    await call_routes(client, tenant)
    assert await by_route(client, tenant) == {
        "GET /items/{n}": {"2xx": 3},
        "POST (unmatched)": {"2xx": 1},
        "GET (unmatched)": {"4xx": 1},
    }


FASTAPI_DOCS = ["/docs", "/docs/*", "/redoc", "/openapi.json"]


async def test_fastapi_docs_made_public_in_one_line(client_for: ClientFor) -> None:
    """``public_paths=["/docs", "/docs/*", "/redoc", "/openapi.json"]``: FastAPI's docs page,
    its OAuth2 redirect, ReDoc and the schema they load answer without a key (they got 401
    when public paths were exact only); the API itself still needs one."""
    client = await client_for(TenantGateway(fastapi_app(), public_paths=FASTAPI_DOCS))
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        page = await client.get(path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"], path
    schema = await client.get("/openapi.json")
    assert schema.status_code == 200 and "/items/{item_id}" in schema.json()["paths"]
    assert_problem(await client.get("/items/1"), 401, "missing_api_key")


@pytest.mark.parametrize(
    ("public", "path", "passes"),
    [
        ("/docs/*", "/docs/a/b", True),
        ("/docs/*", "/docs/", True),
        ("/docs/*", "/docs", False),  # the prefix is "/docs/": list "/docs" too for the page
        ("/docs/*", "/docsearch", False),
        ("/docs*", "/docsearch", True),
        ("/docs/*", "/docs/../items/1", False),  # a dot segment never passes a prefix
        ("/docs/*", "/docs/./x", False),
        ("/docs/*", "/docs/..", False),
        ("/docs/*", "/docs/..x", True),  # a name that merely starts with dots is no segment
        ("/docs", "/docs/x", False),  # without "*" a path is exact
    ],
)
async def test_public_path_prefixes(
    public: str, path: str, passes: bool, client_for: ClientFor
) -> None:
    """Sent as raw ASGI: an HTTP client would resolve the dot segments itself."""
    gateway = TenantGateway(raw_app(), public_paths=[public])
    await client_for(gateway)  # started, and stopped after the test
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    await gateway(scope, receive, send)
    assert (sent[0]["status"] != 401) is passes, (public, path, sent[0]["status"])


@pytest.mark.parametrize("public", ["docs/*", "/docs/*/x", "/*/docs", "/do*cs*"])
def test_a_star_only_at_the_end_of_a_public_path(public: str) -> None:
    with pytest.raises(ConfigurationError, match="public path"):
        TenantGateway(raw_app(), public_paths=[public])
