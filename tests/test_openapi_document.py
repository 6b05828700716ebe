"""The admin API's OpenAPI document (issue 20): every answer is the one it declares, and each
operation has its security and a stable operationId.

A scenario calls every documented operation, on both stores, through a client that keeps
every response. Each must carry a status and a media type the document declares for its
operation, and a JSON body must validate against the declared schema (formats included). The
answer models forbid members they do not name, so a handler that adds, drops or retypes a
member fails here; error answers are checked against the Problem schema the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema_rs
import pytest

from tenant_gateway import TenantGateway
from tenant_gateway.admin import responses
from tenant_gateway.admin.openapi import openapi_document

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, Stores, auth, operator_headers
from .helpers import T

DOCUMENT = openapi_document(T)
METHODS = ("get", "post", "put", "patch", "delete")
TENANT = {"$ref": "#/components/schemas/Tenant"}
TRANSFERS = {("/{tenant_id}/export", "get"), ("/{tenant_id}/import", "post")}
"""PostgreSQL only: on the memory stores they answer 501."""

PLANS = {  # every kind of invoice line: prorated plans, overage, extra seats
    "plans": {
        name: {
            "max_users": 10,
            "monthly_calls": calls,
            "burst_per_second": None,
            "price_cents": price,
            "overage_cents_per_1000": 50,
            "seat_price_cents": 300,
            "included_seats": 1,
        }
        for name, calls, price in (("metered", 2, 1000), ("bigger", 5, 3000))
    }
}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
    return re.compile(re.escape(T) + regex + "$")


OPERATIONS = [
    (template, method, _pattern(template))
    for template, item in DOCUMENT["paths"].items()
    for method in METHODS
    if method in item
]


def operation_of(request: httpx.Request) -> tuple[str, str]:
    """The documented operation a request is for (a literal segment beats a path parameter:
    ``/register`` is not a tenant id)."""
    method = request.method.lower()
    found = [
        (template.count("{"), template)
        for template, m, pattern in OPERATIONS
        if m == method and pattern.match(request.url.path)
    ]
    assert found, f"{request.method} {request.url.path} is not in the document"
    return min(found)[1], method


def validator(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(
        {**schema, "components": DOCUMENT["components"]}, validate_formats=True
    )


def check_answer(template: str, method: str, response: httpx.Response) -> None:
    """The response is one the document declares for the operation, member for member."""
    where = f"{method.upper()} {template} → {response.status_code}"
    declared = DOCUMENT["paths"][template][method]["responses"].get(str(response.status_code))
    assert declared is not None, f"{where}: status not declared: {response.text[:300]}"
    content = declared.get("content")
    if content is None:
        assert response.content == b"", where
        return
    media_type = response.headers["content-type"].split(";")[0].strip()
    assert media_type in content, f"{where}: {media_type} not declared ({sorted(content)})"
    schema = content[media_type]["schema"]
    if media_type == "application/x-ndjson":
        documents = [json.loads(line) for line in response.text.splitlines()]
        assert documents and all(isinstance(d, dict) for d in documents), where
        return
    if media_type.endswith("json"):
        errors = [
            f"{'/'.join(map(str, e.instance_path))}: {e.message}"
            for e in validator(schema).iter_errors(response.json())
        ]
        assert errors == [], f"{where}: {errors}\n{response.text[:1000]}"
        return
    assert schema == {"type": "string"}, where  # text/csv
    assert response.text.startswith("period,dimension,key,status_class,"), where


@dataclass
class Answers:
    """Every response the scenario's client received, with the operation it answers."""

    seen: list[tuple[str, str, httpx.Response]] = field(default_factory=list)

    async def keep(self, response: httpx.Response) -> None:
        if response.request.url.path.startswith(T + "/"):
            await response.aread()
            self.seen.append((*operation_of(response.request), response))

    def succeeded(self) -> set[tuple[str, str]]:
        return {(t, m) for t, m, response in self.seen if response.is_success}


async def scenario(client: httpx.AsyncClient, clock: FakeClock) -> None:
    """Every operation at least once, most answering with their optional members set."""
    operator = operator_headers()
    registered = await client.post(
        f"{T}/register",
        json={"name": "Acme", "plan": "metered", "admin_email": "admin@acme.io"},
    )
    tenant = registered.json()
    tid, key = tenant["id"], auth(tenant)
    base = f"{T}/{tid}"
    assert (await client.get("/whoami", headers=key)).status_code == 200
    await client.get(f"{T}/", params={"limit": "1"}, headers=operator)
    await client.get(base, headers=key)
    await client.patch(base, json={"name": "Acme Corp", "max_users": 8}, headers=key)
    await client.post(f"{base}/suspend", headers=operator)
    await client.post(f"{base}/resume", headers=operator)

    user = (await client.post(f"{base}/users", json={"email": "dev@acme.io"}, headers=key)).json()
    await client.post(f"{base}/users", json={"email": "dev@acme.io"}, headers=key)  # 409
    await client.get(f"{base}/users", headers=key)
    await client.get(f"{base}/users/{user['id']}", headers=key)
    await client.patch(f"{base}/users/{user['id']}", json={"role": "viewer"}, headers=key)

    expiring = {"name": "ci", "role": "admin", "expires_at": "2030-01-01T00:00:00Z"}
    created = (await client.post(f"{base}/keys", json=expiring, headers=key)).json()
    for _ in range(3):  # the quota is 2: the third call is overage
        await client.get("/whoami", headers={"X-API-Key": created["api_key"]})
    await client.get("/nowhere", headers=key)
    rotated = (
        await client.post(
            f"{base}/keys/{created['id']}/rotate", json={"grace_seconds": 60}, headers=key
        )
    ).json()
    await client.delete(f"{base}/keys/{rotated['id']}", headers=key)
    await client.get(f"{base}/keys", headers=key)  # last_used_at, expires_at, revoked_at set

    clock.advance(86_400)  # a day on the first plan, the rest of the month on the second
    await client.put(f"{base}/plan", json={"plan": "bigger"}, headers=key)
    await client.get(f"{base}/usage", headers=key)
    await client.get(f"{base}/usage", params={"period": "2026-13"}, headers=key)  # 422
    await client.get(f"{base}/usage", params={"format": "csv"}, headers=key)
    await client.get(f"{base}/usage", headers={**key, "Accept": "text/csv"})
    await client.get(f"{base}/usage.csv", headers=key)
    await client.get(f"{base}/audit", params={"limit": "2"}, headers=key)

    await client.get(f"{base}/webhook", headers=key)
    await client.get(f"{base}/webhook/deliveries", headers=key)  # the quota's marks, reached
    await client.put(f"{base}/webhook", json={"url": "https://93.184.216.34/hook"}, headers=key)
    await client.get(f"{base}/webhook", headers=key)
    await client.delete(f"{base}/webhook", headers=key)

    await client.get(f"{base}/billing/invoice", headers=key)  # the draft
    exported = await client.get(f"{base}/export", headers=key)
    target = (
        await client.post(
            f"{T}/register", json={"name": "Copy", "plan": "bigger", "admin_email": "admin@copy.io"}
        )
    ).json()
    await client.post(
        f"{T}/{target['id']}/import",
        content=exported.content if exported.is_success else b"",
        headers={**auth(target), "Content-Type": "application/x-ndjson"},
    )

    clock.set(datetime(2026, 12, 1, 0, 5, tzinfo=UTC))  # November is closed: issued
    await client.get(f"{base}/billing/invoice", params={"period": "2026-11"}, headers=key)
    await client.get(f"{base}/billing/invoices", headers=key)
    await client.get(f"{base}/billing/invoice", params={"period": "2026-10"}, headers=key)  # 404
    await client.get(base)  # 401
    await client.post(f"{base}/users", content=b"{", headers=key)  # 400
    await client.delete(f"{base}/users/{user['id']}", headers=key)
    await client.delete(f"{T}/{target['id']}", headers=auth(target))


async def test_every_answer_is_the_declared_one(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    gateway = TenantGateway(
        echo_app(), plans=PLANS, clock=clock, admin_jwt_secret=JWT_SECRET, **stores.kwargs()
    )
    client = await client_for(gateway)
    answers = Answers()
    client.event_hooks["response"].append(answers.keep)
    await scenario(client, clock)
    for template, method, response in answers.seen:
        check_answer(template, method, response)
    documented = {(template, method) for template, method, _ in OPERATIONS}
    expected = documented - (TRANSFERS if stores.name == "memory" else set())
    assert sorted(expected - answers.succeeded()) == []
    assert {response.status_code for *_, response in answers.seen} >= {400, 401, 404, 409, 422}
    lines = [
        line
        for t, _, response in answers.seen
        if t == "/{tenant_id}/billing/invoice" and response.status_code == 200
        for line in response.json()["lines"]
    ]
    optional = {"plan", "period_start", "period_end", "proration", "calls", "overage_calls"}
    assert set().union(*lines) >= optional  # plan segments, overage and seats: every member
    if stores.name == "memory":
        transfers = [r.status_code for t, m, r in answers.seen if (t, m) in TRANSFERS]
        assert transfers == [501, 501]


def test_answers_are_closed() -> None:
    """What keeps the models honest: every answer model but Problem (whose extension members
    RFC 9457 allows) forbids members it does not name, so one more does not validate."""
    schemas = DOCUMENT["components"]["schemas"]
    for name in responses.__all__:
        assert schemas[name]["additionalProperties"] is (name == "Problem"), name
    tenant = {
        "id": "tenant_1",
        "name": "Acme",
        "plan": "free",
        "status": "active",
        "max_users": None,
        "admin_email": "a@acme.io",
        "created_at": "2026-11-10T12:00:00Z",
    }
    assert validator(TENANT).is_valid(tenant)
    errors = [e.message for e in validator(TENANT).iter_errors({**tenant, "api_key": "tk_x"})]
    assert errors == ["Additional properties are not allowed ('api_key' was unexpected)"]


@pytest.mark.parametrize("allow_signup", [True, False])
async def test_security_per_operation(client_for: ClientFor, allow_signup: bool) -> None:
    """``/register`` takes no credential while sign-up is open, an operator's token when it
    is closed; every other operation a key or a token, as a bearer token or ``X-API-Key``."""
    gateway = TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, allow_signup=allow_signup)
    client = await client_for(gateway)
    served = (await client.get(f"{T}/openapi.json")).json()
    schemes = served["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["api_key"] == {**schemes["api_key"], "type": "apiKey", "in": "header"}
    assert schemes["api_key"]["name"] == "X-API-Key" and "security" not in served
    security = {
        (template, method): served["paths"][template][method]["security"]
        for template, method, _ in OPERATIONS
    }
    assert security.pop(("/register", "post")) == ([] if allow_signup else [{"bearer": []}])
    assert all(s == [{"bearer": []}, {"api_key": []}] for s in security.values())


def test_operation_ids_are_stable_snake_case() -> None:
    """A generated client's function names: unique, snake_case, and pinned here (renaming one
    breaks every client generated before)."""
    ids = {
        (template, method): DOCUMENT["paths"][template][method]["operationId"]
        for template, method, _ in OPERATIONS
    }
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", i) for i in ids.values())
    assert len(set(ids.values())) == len(ids)
    assert ids[("/register", "post")] == "register_tenant"
    assert ids[("/{tenant_id}/usage.csv", "get")] == "get_usage_csv"
    assert sorted(ids.values()) == sorted(
        """add_user change_plan create_key delete_tenant delete_user delete_webhook
        export_tenant get_invoice get_tenant get_usage get_usage_csv get_user get_webhook
        import_tenant list_audit_entries list_invoices list_keys list_tenants list_users
        list_webhook_deliveries
        register_tenant resume_tenant revoke_key rotate_key set_webhook suspend_tenant
        update_tenant update_user""".split()
    )
