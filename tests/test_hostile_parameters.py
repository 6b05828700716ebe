"""Every path and query parameter of every route, hostile: a 4xx problem+json, never a 500
(issue 17, finding 8).

The admin routes and the query parameters each reads come from the admin app's own OpenAPI
document, and a test pins that the document names exactly the routes the router serves, so a
new route or parameter is covered here without editing this file. Each hostile value is sent
with an operator token (which passes ``authorize`` for any tenant id, so the value really
reaches the handler and, unless refused first, the store), the other ids being real ones.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from tenant_gateway import TenantGateway
from tenant_gateway.admin.openapi import openapi_document
from tenant_gateway.demo import build_demo_app, create_projects_table

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, Stores, auth, operator_headers, register
from .helpers import assert_problem

T = "/api/v1/tenants"

HOSTILE = {
    "NUL": "%00",
    "lone surrogate": "%ED%A0%80",  # UTF-8 of U+D800, which no valid UTF-8 holds
    "overlong NUL": "%C0%80",
    "superscript two": "%C2%B2",  # ² passes str.isdigit(), int() refuses it
    "arabic-indic three": "%D9%A3",  # ٣: isdigit() too, and int() takes it
    "10,000 characters": "9" * 10_000,
}

BODIES: dict[tuple[str, str], Any] = {
    ("/register", "post"): {"name": "Acme", "admin_email": "a@acme.io"},
    ("/{tenant_id}", "patch"): {"name": "Renamed"},
    ("/{tenant_id}/plan", "put"): {"plan": "free"},
    ("/{tenant_id}/users", "post"): {"email": "new@acme.io", "role": "viewer"},
    ("/{tenant_id}/users/{user_id}", "patch"): {"role": "viewer"},
    ("/{tenant_id}/keys", "post"): {"name": "k"},
    ("/{tenant_id}/keys/{key_id}/rotate", "post"): {"grace_seconds": 0},
    ("/{tenant_id}/webhook", "put"): {"url": "https://93.184.216.34/hook"},
}
"""A valid body for each operation that takes one, so a bad id is what gets refused."""

DOCUMENT = openapi_document("")["paths"]
METHODS = ("get", "post", "put", "patch", "delete")
OPERATIONS = [
    (path, method, operation)
    for path, item in DOCUMENT.items()
    for method in METHODS
    if (operation := item.get(method)) is not None
]
PATH_CASES = [
    pytest.param(path, method, name, id=f"{method.upper()} {path} {{{name}}}")
    for path, method, _ in OPERATIONS
    for name in re.findall(r"{(\w+)}", path)
]
QUERY_NAMES = sorted(
    {p["name"] for _, _, op in OPERATIONS for p in op.get("parameters", []) if p["in"] == "query"}
)
QUERY_CASES = [
    pytest.param(
        path, method, parameter["name"], id=f"{method.upper()} {path} ?{parameter['name']}"
    )
    for path, method, operation in OPERATIONS
    for parameter in operation.get("parameters", [])
    if parameter["in"] == "query"
]
READ_CASES = [
    pytest.param(path, method, id=f"GET {path}")
    for path, method, _ in OPERATIONS
    if method == "get"
]


def _gateway(stores: Stores) -> TenantGateway:
    return TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, **stores.kwargs())


async def _own_ids(client: httpx.AsyncClient) -> dict[str, str]:
    tenant = await register(client)
    users = (await client.get(f"{T}/{tenant['id']}/users", headers=auth(tenant))).json()
    keys = (await client.get(f"{T}/{tenant['id']}/keys", headers=auth(tenant))).json()
    return {"tenant_id": tenant["id"], "user_id": users[0]["id"], "key_id": keys[0]["id"]}


def _url(path: str, ids: dict[str, str], query: str = "") -> str:
    filled = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], path)
    return T + filled + (f"?{query}" if query else "")


async def _send(client: httpx.AsyncClient, method: str, path: str, url: str) -> httpx.Response:
    body = BODIES.get((path, method))
    return await client.request(
        method.upper(), url, json=body, headers=operator_headers()
    )  # operators may act on any tenant id: the hostile value reaches the handler


def test_the_document_names_every_admin_route() -> None:
    gateway = TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET)
    (mount,) = gateway.admin_app.routes
    assert isinstance(mount, Mount)
    served = {
        (route.path, method.lower())
        for route in mount.routes
        if isinstance(route, Route) and route.path != "/openapi.json"
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert served == {(path, method) for path, method, _ in OPERATIONS}
    assert QUERY_NAMES == ["after", "app_only", "before", "dry_run", "format", "limit", "period"]


@pytest.mark.parametrize(("path", "method", "name"), PATH_CASES)
async def test_hostile_path_ids_are_404(
    stores: Stores, client_for: ClientFor, path: str, method: str, name: str
) -> None:
    client = await client_for(_gateway(stores))
    ids = await _own_ids(client)
    for case, value in HOSTILE.items():
        response = await _send(client, method, path, _url(path, {**ids, name: value}))
        assert response.status_code == 404, (case, response.text)
        assert_problem(response, 404, "not_found")
    # nothing was changed on the way: the real tenant, user and key are as they were
    tenant = await client.get(_url("/{tenant_id}", ids), headers=operator_headers())
    assert tenant.json()["status"] == "active" and tenant.json()["name"] == "Acme Corp"
    keys = (await client.get(_url("/{tenant_id}/keys", ids), headers=operator_headers())).json()
    assert [(k["id"], k["revoked_at"]) for k in keys] == [(ids["key_id"], None)]
    users = (await client.get(_url("/{tenant_id}/users", ids), headers=operator_headers())).json()
    assert [(u["id"], u["role"]) for u in users] == [(ids["user_id"], "admin")]


@pytest.mark.parametrize(("path", "method", "name"), QUERY_CASES)
async def test_hostile_query_values_are_422(
    stores: Stores, client_for: ClientFor, path: str, method: str, name: str
) -> None:
    client = await client_for(_gateway(stores))
    ids = await _own_ids(client)
    for case, value in HOSTILE.items():
        response = await _send(client, method, path, _url(path, ids, f"{name}={value}"))
        if path.endswith("/import") and stores.name == "memory":
            # import needs PostgreSQL: refused before any parameter is read
            assert_problem(response, 501, "not_supported")
            continue
        assert response.status_code == 422, (case, response.text)
        problem = assert_problem(response, 422, "validation_error")
        assert [error["field"] for error in problem["errors"]] == [name], case


@pytest.mark.parametrize(("path", "method"), READ_CASES)
async def test_query_parameters_a_route_does_not_read_are_ignored(
    stores: Stores, client_for: ClientFor, path: str, method: str
) -> None:
    client = await client_for(_gateway(stores))
    ids = await _own_ids(client)
    declared = {p["name"] for p in DOCUMENT[path][method].get("parameters", [])}
    expected = 501 if path.endswith("/export") and stores.name == "memory" else 200
    for case, value in HOSTILE.items():
        for name in [*(n for n in QUERY_NAMES if n not in declared), "x"]:
            response = await _send(client, method, path, _url(path, ids, f"{name}={value}"))
            assert response.status_code == expected, (case, name, response.text[:300])


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_endpoints_ignore_hostile_queries(
    stores: Stores, client_for: ClientFor, path: str
) -> None:
    client = await client_for(_gateway(stores))
    for case, value in HOSTILE.items():
        for name in (*QUERY_NAMES, "x"):
            response = await client.get(f"{path}?{name}={value}", headers=operator_headers())
            assert response.status_code == 200, (case, name, response.text)


async def test_demo_project_routes(stores: Stores, client_for: ClientFor) -> None:
    gateway = TenantGateway(
        build_demo_app(stores.database_url), admin_jwt_secret=JWT_SECRET, **stores.kwargs()
    )
    client = await client_for(gateway)
    if stores.database_url is not None:
        await create_projects_table(stores.database_url)  # the demo's lifespan does this
    tenant = await register(client, plan="enterprise")
    created = await client.post("/api/v1/projects", json={"name": "p"}, headers=auth(tenant))
    assert created.status_code == 201, created.text
    projects = [created.json()["id"]]
    for case, value in HOSTILE.items():
        for method in ("GET", "DELETE"):
            response = await client.request(
                method, f"/api/v1/projects/{value}", headers=auth(tenant)
            )
            assert response.status_code == 404, (case, method, response.text)
            assert_problem(response, 404, "not_found")
        query = f"name={value}&x={value}"
        posted = await client.post(
            f"/api/v1/projects?{query}", json={"name": "q"}, headers=auth(tenant)
        )
        assert posted.status_code == 201, (case, posted.text)
        projects.append(posted.json()["id"])
        listed = await client.get(f"/api/v1/projects?{query}", headers=auth(tenant))
        assert listed.status_code == 200, (case, listed.text)
        assert sorted(p["id"] for p in listed.json()) == sorted(projects), case
    fetched = await client.get(f"/api/v1/projects/{projects[0]}", headers=auth(tenant))
    assert fetched.json() == created.json()
