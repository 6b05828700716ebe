"""Hostile input to the admin API: always a 4xx problem+json, never a 500, never a partial write."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tenant_gateway import TenantGateway

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, Stores, auth, operator_headers, register
from .helpers import tenant_count

T = "/api/v1/tenants"
VALID = {"name": "Acme", "admin_email": "a@acme.io"}


def with_(**changes: Any) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def raw_field(field: str, raw_json: str) -> bytes:
    """A body whose ``field`` holds JSON text that json.dumps would never produce."""
    return f'{{"name": "Acme", "admin_email": "a@acme.io", "{field}": {raw_json}}}'.encode()


DEEP = b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

REGISTER_BODIES: list[tuple[str, bytes, int]] = [
    ("empty body", b"", 400),
    ("null", b"null", 422),
    ("array", b"[]", 422),
    ("string", b'"tenant"', 422),
    ("number", b"123", 422),
    ("truncated", b'{"name": "Ac', 400),
    ("form encoded", b"name=Acme&admin_email=a@acme.io", 400),
    ("invalid utf-8", b'{"name": "\xff\xfe", "admin_email": "a@acme.io"}', 400),
    ("missing fields", b"{}", 422),
    ("name is a number", with_(name=123), 422),
    ("name is empty", with_(name=""), 422),
    ("name is blank", with_(name="   "), 422),
    ("name too long", with_(name="x" * 201), 422),
    ("name with NUL", with_(name="a\u0000b"), 422),
    ("name with newline", with_(name="a\nb"), 422),
    ("name lone surrogate", raw_field("name", '"\\ud800"'), 422),
    ("name is a list", with_(name=["Acme"]), 422),
    ("name is an operator object", with_(name={"$ne": None}), 422),
    ("unknown plan", with_(plan="platinum"), 422),
    ("plan null", with_(plan=None), 422),
    ("plan number", with_(plan=1), 422),
    ("plan SQL", with_(plan="free' OR '1'='1"), 422),
    ("max_users negative", with_(max_users=-1), 422),
    ("max_users zero", with_(max_users=0), 422),
    ("max_users huge", with_(max_users=10**30), 422),
    ("max_users 2^31", with_(max_users=2**31), 422),
    ("max_users infinity", raw_field("max_users", "1e400"), 422),
    ("max_users NaN", raw_field("max_users", "NaN"), 422),
    ("max_users string", with_(max_users="5"), 422),
    ("max_users bool", with_(max_users=True), 422),
    ("max_users float", with_(max_users=5.5), 422),
    ("email without at", with_(admin_email="not-an-email"), 422),
    ("email without dot", with_(admin_email="a@b"), 422),
    ("email with space", with_(admin_email="a b@c.io"), 422),
    ("email too long", with_(admin_email="x" * 300 + "@a.io"), 422),
    ("email null", with_(admin_email=None), 422),
    ("unknown field", with_(is_operator=True), 422),
    ("status injection", with_(status="active", id="tenant_mine"), 422),
    ("deep nesting", DEEP, 400),
    ("over 1 MiB", with_(name="x" * (1024 * 1024)), 413),
]


@pytest.fixture
async def gateway_client(stores: Stores, client_for: ClientFor) -> Any:
    return await client_for(
        TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, **stores.kwargs())
    )


@pytest.mark.parametrize(
    ("case", "body", "status"), REGISTER_BODIES, ids=[c[0] for c in REGISTER_BODIES]
)
async def test_register_refuses_hostile_bodies(
    gateway_client: Any, case: str, body: bytes, status: int
) -> None:
    before = await tenant_count(gateway_client)
    response = await gateway_client.post(
        f"{T}/register", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, (case, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    expected_code = "payload_too_large" if status == 413 else "validation_error"
    assert problem["code"] == expected_code
    if expected_code == "validation_error":
        assert problem["errors"] and all("field" in e and "message" in e for e in problem["errors"])
    assert await tenant_count(gateway_client) == before


async def test_sql_and_unicode_text_is_stored_verbatim(gateway_client: Any) -> None:
    before = await tenant_count(gateway_client)
    for name in ("'; DROP TABLE tg_tenants; --", "Ωmega 🚀 Ltd", "Robert'); --", "ñ" * 200):
        tenant = await register(gateway_client, name=name)
        fetched = await gateway_client.get(f"{T}/{tenant['id']}", headers=auth(tenant))
        assert fetched.json()["name"] == name
    assert await tenant_count(gateway_client) == before + 4


USER_BODIES: list[tuple[str, Any, int]] = [
    ("unknown role", {"email": "u@acme.io", "role": "superadmin"}, 422),
    ("role number", {"email": "u@acme.io", "role": 1}, 422),
    ("bad email", {"email": "@acme.io"}, 422),
    ("email list", {"email": ["u@acme.io"]}, 422),
    ("extra tenant_id", {"email": "u@acme.io", "tenant_id": "tenant_other"}, 422),
    ("empty", {}, 422),
]


@pytest.mark.parametrize(("case", "body", "status"), USER_BODIES, ids=[c[0] for c in USER_BODIES])
async def test_add_user_refuses_hostile_bodies(
    gateway_client: Any, case: str, body: Any, status: int
) -> None:
    tenant = await register(gateway_client)
    response = await gateway_client.post(
        f"{T}/{tenant['id']}/users", json=body, headers=auth(tenant)
    )
    assert response.status_code == status, (case, response.text)
    assert response.json()["code"] == "validation_error"
    users = await gateway_client.get(f"{T}/{tenant['id']}/users", headers=auth(tenant))
    assert len(users.json()) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/tenant_x'; DROP TABLE tg_tenants; --",
        "/" + "a" * 5000,
        "/%00",
        "/tenant_%F0%9F%9A%80/users",
        "/..%2F..%2Fetc%2Fpasswd",
    ],
)
async def test_hostile_tenant_ids_are_404(gateway_client: Any, path: str) -> None:
    tenant = await register(gateway_client)
    response = await gateway_client.get(f"{T}{path}", headers=auth(tenant))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_plan_change_refuses_hostile_bodies(gateway_client: Any) -> None:
    tenant = await register(gateway_client)
    # Not JSON at all: 400; JSON that is not a valid plan change: 422.
    for body, status in (
        (b"", 400),
        (b"{}", 422),
        (b'{"plan": null}', 422),
        (b'{"plan": ["free"]}', 422),
        (b'{"plan": "free", "x": 1}', 422),
    ):
        response = await gateway_client.put(
            f"{T}/{tenant['id']}/plan", content=body, headers=auth(tenant)
        )
        assert response.status_code == status, body
        assert response.json()["code"] == "validation_error"
    fetched = await gateway_client.get(f"{T}/{tenant['id']}", headers=auth(tenant))
    assert fetched.json()["plan"] == "free"


# -- more than one credential (issue 17, finding 9) ----------------------------------------------


def _credential_lines(first: str, second: str) -> dict[str, list[tuple[str, str]]]:
    """Two credentials in one request, every way a client can send them."""
    return {
        "two Authorization lines": [
            ("Authorization", f"Bearer {first}"),
            ("Authorization", f"Bearer {second}"),
        ],
        "two X-API-Key lines": [("X-API-Key", first), ("X-API-Key", second)],
        "Authorization and X-API-Key": [
            ("Authorization", f"Bearer {first}"),
            ("X-API-Key", second),
        ],
        "X-API-Key and Authorization": [
            ("X-API-Key", first),
            ("Authorization", f"Bearer {second}"),
        ],
    }


async def test_two_tenants_credentials_in_one_request_are_400(gateway_client: Any) -> None:
    """The attack: the gate used the last Authorization line, the admin API the first, so one
    request could be metered as one tenant and act as another."""
    a, b = await register(gateway_client), await register(gateway_client)
    for first, second in ((a, b), (b, a)):
        for case, lines in _credential_lines(first["api_key"], second["api_key"]).items():
            gate = await gateway_client.get("/whoami", headers=lines)
            assert gate.status_code == 400, (case, gate.text)
            assert gate.json()["code"] == "ambiguous_credentials"
            assert gate.headers["content-type"] == "application/problem+json"
            admin = await gateway_client.delete(f"{T}/{a['id']}", headers=lines)
            assert admin.status_code == 400, (case, admin.text)
            assert admin.json()["code"] == "ambiguous_credentials"
    for tenant in (a, b):  # neither was deleted, both keys still work alone
        assert (await gateway_client.get("/whoami", headers=auth(tenant))).status_code == 200


async def test_an_operator_token_beside_a_tenant_key_is_400(gateway_client: Any) -> None:
    tenant = await register(gateway_client)
    token = operator_headers()["Authorization"].removeprefix("Bearer ")
    for case, lines in _credential_lines(token, tenant["api_key"]).items():
        response = await gateway_client.post(f"{T}/{tenant['id']}/suspend", headers=lines)
        assert response.status_code == 400, (case, response.text)
        assert response.json()["code"] == "ambiguous_credentials"
    fetched = await gateway_client.get(f"{T}/{tenant['id']}", headers=auth(tenant))
    assert fetched.json()["status"] == "active"


async def test_the_same_credential_repeated_is_one_credential(gateway_client: Any) -> None:
    tenant = await register(gateway_client)
    key = tenant["api_key"]
    for case, lines in _credential_lines(key, key).items():
        gate = await gateway_client.get("/whoami", headers=lines)
        assert gate.status_code == 200, (case, gate.text)
        assert gate.json()["scope_state"] == tenant["id"]
        admin = await gateway_client.get(f"{T}/{tenant['id']}", headers=lines)
        assert admin.status_code == 200, (case, admin.text)
    # another scheme, or a blank value, is no credential: the other line is the only one
    for lines in (
        [("Authorization", "Basic dXNlcjpwYXNz"), ("X-API-Key", key)],
        [("Authorization", "Bearer   "), ("Authorization", f"Bearer {key}")],
        [("X-API-Key", " "), ("Authorization", f"bearer {key}")],
    ):
        assert (await gateway_client.get("/whoami", headers=lines)).status_code == 200, lines
        assert (await gateway_client.get(f"{T}/{tenant['id']}", headers=lines)).status_code == 200
