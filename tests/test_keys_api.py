"""Key lifecycle, roles, operator tokens, tenant status and the audit trail (issue 4)."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tenant_gateway import TenantGateway

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, Stores, auth, operator_headers, register
from .helpers import assert_problem, tenant_count

T = "/api/v1/tenants"
FULL_KEY = re.compile(r"tk_[A-Za-z0-9_-]{38}")


def gateway(stores: Stores, clock: FakeClock | None = None, **kwargs: Any) -> TenantGateway:
    if clock is not None:
        kwargs["clock"] = clock
    return TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, **stores.kwargs(), **kwargs)


async def new_key(client: Any, tenant: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await client.post(f"{T}/{tenant['id']}/keys", json=body, headers=auth(tenant))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_list_revoke(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    created = await new_key(client, tenant, name="ci", role="developer")
    assert FULL_KEY.fullmatch(created["api_key"]) and created["prefix"] == created["api_key"][:11]
    assert (
        created["role"] == "developer" and created["name"] == "ci" and created["expires_at"] is None
    )
    assert (await client.get("/whoami", headers=auth(created))).status_code == 200
    listing = await client.get(f"{T}/{tenant['id']}/keys", headers=auth(tenant))
    assert listing.status_code == 200
    assert not FULL_KEY.search(listing.text), "a listing must never contain a key secret"
    keys = {k["id"]: k for k in listing.json()}
    assert set(keys[created["id"]]) == {
        "id",
        "name",
        "role",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    }
    assert keys[created["id"]]["last_used_at"] is not None  # used once above
    revoke = await client.delete(f"{T}/{tenant['id']}/keys/{created['id']}", headers=auth(tenant))
    assert revoke.status_code == 204
    assert_problem(await client.get("/whoami", headers=auth(created)), 401, "invalid_api_key")
    assert_problem(
        await client.delete(f"{T}/{tenant['id']}/keys/key_nope", headers=auth(tenant)),
        404,
        "not_found",
    )
    # the tenant and its other keys are untouched
    assert (await client.get("/whoami", headers=auth(tenant))).status_code == 200


async def test_no_endpoint_returns_a_secret_except_create_and_rotate(
    stores: Stores, client_for: ClientFor
) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    await new_key(client, tenant)
    for path in ("", "/keys", "/users", "/usage", "/audit"):
        response = await client.get(f"{T}/{tenant['id']}{path}", headers=auth(tenant))
        assert response.status_code == 200, path
        assert not FULL_KEY.search(response.text), path
    operator_listing = await client.get(f"{T}/", headers=operator_headers())
    assert not FULL_KEY.search(operator_listing.text)


async def test_rotate_with_grace_zero_and_n(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    client = await client_for(gateway(stores, clock))
    tenant = await register(client)
    old = await new_key(client, tenant, name="svc", role="developer")
    rotated = await client.post(
        f"{T}/{tenant['id']}/keys/{old['id']}/rotate",
        json={"grace_seconds": 60},
        headers=auth(tenant),
    )
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["api_key"] != old["api_key"] and new["name"] == "svc" and new["role"] == "developer"
    assert (await client.get("/whoami", headers=auth(new))).status_code == 200
    clock.advance(59)
    assert (await client.get("/whoami", headers=auth(old))).status_code == 200
    clock.advance(2)
    assert_problem(await client.get("/whoami", headers=auth(old)), 401, "invalid_api_key")
    # grace 0 (the default, empty body): the old key stops at once
    again = await client.post(f"{T}/{tenant['id']}/keys/{new['id']}/rotate", headers=auth(tenant))
    assert again.status_code == 201
    assert_problem(await client.get("/whoami", headers=auth(new)), 401, "invalid_api_key")
    assert (await client.get("/whoami", headers=auth(again.json()))).status_code == 200
    # a revoked key cannot be rotated back to life
    stale = await client.post(f"{T}/{tenant['id']}/keys/{new['id']}/rotate", headers=auth(tenant))
    assert_problem(stale, 404, "not_found")


async def test_expired_key_is_401(stores: Stores, client_for: ClientFor, clock: FakeClock) -> None:
    client = await client_for(gateway(stores, clock))
    tenant = await register(client)
    expires = datetime.fromtimestamp(clock(), UTC) + timedelta(seconds=30)
    key = await new_key(client, tenant, expires_at=expires.isoformat())
    assert key["expires_at"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await client.get("/whoami", headers=auth(key))).status_code == 200
    clock.advance(30)
    assert_problem(await client.get("/whoami", headers=auth(key)), 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x" * 101}, "name"),
        ({"name": ""}, "name"),
        ({"role": "root"}, "role"),
        ({"role": "operator"}, "role"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no timezone
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_at": 1893456000}, "expires_at"),
        ({"api_key": "tk_chosen_by_me"}, "api_key"),
    ],
)
async def test_key_creation_bad_input(
    stores: Stores, client_for: ClientFor, body: dict[str, Any], field: str
) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    response = await client.post(f"{T}/{tenant['id']}/keys", json=body, headers=auth(tenant))
    problem = assert_problem(response, 422, "validation_error")
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    assert len((await client.get(f"{T}/{tenant['id']}/keys", headers=auth(tenant))).json()) == 1


@pytest.mark.parametrize("grace", [-1, 30 * 86_400 + 1, "60", 1.5, None])
async def test_rotation_grace_bounds(stores: Stores, client_for: ClientFor, grace: Any) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    key = await new_key(client, tenant)
    response = await client.post(
        f"{T}/{tenant['id']}/keys/{key['id']}/rotate",
        json={"grace_seconds": grace},
        headers=auth(tenant),
    )
    assert_problem(response, 422, "validation_error")
    assert (await client.get("/whoami", headers=auth(key))).status_code == 200


# -- roles ------------------------------------------------------------------------------------

ROLE_TABLE: list[tuple[str, str, str, Any, set[str]]] = [
    # method, path (after /{id}), label, body, roles allowed
    ("GET", "/whoami", "wrapped API", None, {"admin", "developer"}),
    ("GET", "", "read tenant", None, {"admin", "developer", "viewer", "billing"}),
    ("PATCH", "", "update tenant", {"name": "Renamed"}, {"admin"}),
    ("GET", "/users", "list users", None, {"admin", "viewer"}),
    ("POST", "/users", "add user", {"email": "new@x.io"}, {"admin"}),
    ("GET", "/keys", "list keys", None, {"admin", "viewer"}),
    ("POST", "/keys", "create key", {}, {"admin"}),
    ("GET", "/usage", "usage", None, {"admin", "developer", "viewer", "billing"}),
    ("PUT", "/plan", "change plan", {"plan": "professional"}, {"admin"}),
    ("GET", "/audit", "audit", None, {"admin"}),
    ("POST", "/suspend", "suspend (operator only)", None, set()),
]


@pytest.mark.parametrize("role", ["admin", "developer", "viewer", "billing"])
async def test_each_roles_allowed_and_forbidden_endpoints(
    stores: Stores, client_for: ClientFor, role: str
) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client, plan="professional")
    key = await new_key(client, tenant, role=role) if role != "admin" else tenant
    for method, path, label, body, allowed in ROLE_TABLE:
        url = path if path == "/whoami" else f"{T}/{tenant['id']}{path}"
        response = await client.request(method, url, json=body, headers=auth(key))
        if role in allowed:
            assert response.status_code < 300, (role, label, response.text)
        else:
            assert_problem(response, 403, "forbidden")


# -- operator tokens --------------------------------------------------------------------------


def _token(key: Any, algorithm: str, **claims: Any) -> dict[str, str]:
    now = int(time.time())
    payload = {"sub": "ops", "role": "operator", "iat": now, "exp": now + 3600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(payload, key, algorithm=algorithm)}


def _none_token() -> dict[str, str]:
    header = {"alg": "none", "typ": "JWT"}
    payload = {"sub": "ops", "role": "operator", "exp": int(time.time()) + 3600}

    def part(value: dict[str, Any]) -> str:
        import base64

        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return {"Authorization": f"Bearer {part(header)}.{part(payload)}."}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            operator_headers(secret="another-secret-another-secret-12"), id="wrong secret"
        ),
        pytest.param(_none_token(), id="alg none"),
        pytest.param(operator_headers(exp=1_000_000_000), id="expired"),
        pytest.param(operator_headers(role=None), id="missing role"),
        pytest.param(operator_headers(role="admin"), id="wrong role"),
        pytest.param(operator_headers(aud="someone-else"), id="wrong audience"),
        pytest.param(operator_headers(iss="https://evil.example"), id="wrong issuer"),
        pytest.param(operator_headers(nbf=4_000_000_000), id="not yet valid"),
        pytest.param(
            {"Authorization": "Bearer " + jwt.encode({"role": "operator"}, JWT_SECRET, "HS256")},
            id="no exp",
        ),
    ],
)
async def test_bad_operator_tokens_are_401(
    stores: Stores, client_for: ClientFor, headers: dict[str, str]
) -> None:
    client = await client_for(
        gateway(stores, admin_jwt_audience="tenant-gateway", admin_jwt_issuer="https://ops.example")
    )
    assert_problem(await client.get(f"{T}/", headers=headers), 401, "invalid_api_key")
    good = operator_headers(aud="tenant-gateway", iss="https://ops.example")
    assert (await client.get(f"{T}/", headers=good)).status_code == 200


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_key_operator_tokens(stores: Stores, client_for: ClientFor, kind: str) -> None:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    client = await client_for(
        TenantGateway(echo_app(), admin_jwt_public_key=public_pem, **stores.kwargs())
    )
    tenant = await register(client)
    assert (
        await client.get(f"{T}/{tenant['id']}", headers=_token(private, kind))
    ).status_code == 200
    # key confusion: an HS256 token "signed" with the public key text must not pass
    confused = {
        "Authorization": "Bearer "
        + jwt.api_jws.PyJWS().encode(
            json.dumps({"role": "operator", "exp": 4_102_444_800}).encode(),
            key=b"x" * 32,
            algorithm="HS256",
        )
    }
    assert_problem(
        await client.get(f"{T}/{tenant['id']}", headers=confused), 401, "invalid_api_key"
    )
    other = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    forged = _token(other, kind)
    assert_problem(await client.get(f"{T}/{tenant['id']}", headers=forged), 401, "invalid_api_key")


# -- status, deletion, audit -------------------------------------------------------------------


async def test_delete_tenant(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    extra = await new_key(client, tenant)
    assert (await client.delete(f"{T}/{tenant['id']}", headers=auth(tenant))).status_code == 204
    for key in (tenant, extra):
        assert_problem(await client.get("/whoami", headers=auth(key)), 401, "invalid_api_key")
    for path in ("", "/users", "/usage"):
        response = await client.get(f"{T}/{tenant['id']}{path}", headers=operator_headers())
        assert_problem(response, 404, "not_found")
    listing = await client.get(f"{T}/", params={"limit": 500}, headers=operator_headers())
    assert tenant["id"] not in [t["id"] for t in listing.json()["items"]]


async def test_update_tenant(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client, max_users=4)
    url = f"{T}/{tenant['id']}"
    updated = await client.patch(
        url, json={"name": "New name", "admin_email": "boss@x.io"}, headers=auth(tenant)
    )
    assert updated.status_code == 200
    assert updated.json()["name"] == "New name" and updated.json()["max_users"] == 4
    cleared = await client.patch(url, json={"max_users": None}, headers=auth(tenant))
    assert cleared.json()["max_users"] is None
    await client.post(f"{url}/users", json={"email": "u@x.io"}, headers=auth(tenant))
    assert_problem(
        await client.patch(url, json={"max_users": 1}, headers=auth(tenant)), 409, "too_many_users"
    )
    assert (await client.get(url, headers=auth(tenant))).json()["max_users"] is None
    for bad in ({}, {"name": None}, {"plan": "enterprise"}, {"status": "active"}):
        assert_problem(
            await client.patch(url, json=bad, headers=auth(tenant)), 422, "validation_error"
        )


async def test_user_get_update_delete(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    users = f"{T}/{tenant['id']}/users"
    user = (await client.post(users, json={"email": "dev@x.io"}, headers=auth(tenant))).json()
    assert (await client.get(f"{users}/{user['id']}", headers=auth(tenant))).json() == user
    changed = await client.patch(
        f"{users}/{user['id']}", json={"role": "viewer"}, headers=auth(tenant)
    )
    assert changed.json()["role"] == "viewer"
    assert (await client.delete(f"{users}/{user['id']}", headers=auth(tenant))).status_code == 204
    for method in ("GET", "DELETE"):
        assert_problem(
            await client.request(method, f"{users}/{user['id']}", headers=auth(tenant)),
            404,
            "not_found",
        )
    other = await register(client)
    other_user = (await client.get(f"{T}/{other['id']}/users", headers=auth(other))).json()[0]
    assert_problem(
        await client.get(f"{users}/{other_user['id']}", headers=auth(tenant)), 404, "not_found"
    )


async def test_audit_log(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client)
    key = await new_key(client, tenant, name="k")
    await client.delete(f"{T}/{tenant['id']}/keys/{key['id']}", headers=auth(tenant))
    await client.post(f"{T}/{tenant['id']}/suspend", headers=operator_headers())
    await client.post(f"{T}/{tenant['id']}/resume", headers=operator_headers())
    log = (await client.get(f"{T}/{tenant['id']}/audit", headers=auth(tenant))).json()
    actions = [(e["action"], e["actor"]) for e in log["items"]]
    registration_key = (
        "key:"
        + (await client.get(f"{T}/{tenant['id']}/keys", headers=auth(tenant))).json()[0]["id"]
    )
    assert actions == [
        ("tenant.resume", "operator:ops@example.com"),
        ("tenant.suspend", "operator:ops@example.com"),
        ("key.revoke", registration_key),
        ("key.create", registration_key),
        ("tenant.register", "anonymous"),
    ]
    assert all(e["ip"] == "127.0.0.1" and e["at"].endswith("Z") for e in log["items"])
    first = (
        await client.get(f"{T}/{tenant['id']}/audit", params={"limit": 2}, headers=auth(tenant))
    ).json()
    assert len(first["items"]) == 2 and first["next_before"] is not None
    rest = (
        await client.get(
            f"{T}/{tenant['id']}/audit",
            params={"limit": 10, "before": first["next_before"]},
            headers=auth(tenant),
        )
    ).json()
    assert [e["action"] for e in first["items"] + rest["items"]] == [a for a, _ in actions]
    assert rest["next_before"] is None


# -- issue 17: rotation cutoffs, operator token times, an audit trail to trust -----------------


async def test_a_second_rotation_never_prolongs_the_old_key(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    client = await client_for(gateway(stores, clock))
    tenant = await register(client)
    old = await new_key(client, tenant, name="svc")
    rotate = f"{T}/{tenant['id']}/keys/{old['id']}/rotate"
    first = await client.post(rotate, json={"grace_seconds": 60}, headers=auth(tenant))
    assert first.status_code == 201, first.text
    clock.advance(10)  # within the grace: the old key may be rotated again …
    second = await client.post(rotate, json={"grace_seconds": 86_400}, headers=auth(tenant))
    assert second.status_code == 201, second.text
    clock.advance(49)
    assert (await client.get("/whoami", headers=auth(old))).status_code == 200
    clock.advance(2)  # … but it still ends 60 s after the first rotation, not a day later
    assert_problem(await client.get("/whoami", headers=auth(old)), 401, "invalid_api_key")
    listed = (await client.get(f"{T}/{tenant['id']}/keys", headers=auth(tenant))).json()
    revoked_at = {k["id"]: k["revoked_at"] for k in listed}[old["id"]]
    first_cutoff = datetime.fromtimestamp(clock() - 61 + 60, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert revoked_at.startswith(first_cutoff), revoked_at
    for successor in (first.json(), second.json()):
        assert (await client.get("/whoami", headers=auth(successor))).status_code == 200


def _signed(**claims: Any) -> dict[str, str]:
    payload = {"sub": "ops", "role": "operator", **claims}
    return {"Authorization": "Bearer " + jwt.encode(payload, JWT_SECRET, algorithm="HS256")}


def _raw_signed(payload_json: str) -> dict[str, str]:
    """A token whose payload is exactly this JSON text (PyJWT would not write a string exp)."""
    token = jwt.api_jws.PyJWS().encode(payload_json.encode(), JWT_SECRET, algorithm="HS256")
    return {"Authorization": "Bearer " + token}


def _hour() -> int:
    return int(time.time()) + 3600


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda: _signed(exp=1e308), id="exp 1e308"),
        pytest.param(lambda: _signed(exp=float(_hour())), id="exp a float"),
        pytest.param(
            lambda: _raw_signed(f'{{"sub": "ops", "role": "operator", "exp": "{_hour()}"}}'),
            id="exp a string",
        ),
        pytest.param(lambda: _signed(exp=_hour(), nbf="0"), id="nbf a string"),
        pytest.param(lambda: _signed(exp=_hour(), iat=time.time()), id="iat a float"),
        pytest.param(lambda: _signed(exp=_hour(), iat=-1), id="iat negative"),
        pytest.param(lambda: _signed(exp=300_000_000_000), id="exp past year 9999"),
        pytest.param(lambda: _signed(exp=int(time.time()) + 25 * 3600), id="25 h from now"),
        pytest.param(
            lambda: _signed(iat=int(time.time()) - 3600, exp=int(time.time()) + 24 * 3600),
            id="25 h from iat",
        ),
        pytest.param(lambda: _signed(exp=4_102_444_800), id="exp in 2100"),
    ],
)
async def test_operator_tokens_with_bad_times_are_401(
    stores: Stores, client_for: ClientFor, headers: Any
) -> None:
    client = await client_for(gateway(stores))
    assert_problem(await client.get(f"{T}/", headers=headers()), 401, "invalid_api_key")
    assert (await client.get(f"{T}/", headers=_signed(exp=_hour()))).status_code == 200


async def test_operator_token_lifetime_setting(stores: Stores, client_for: ClientFor) -> None:
    now = int(time.time())
    default = await client_for(gateway(stores))
    for fine in (
        _signed(exp=now + 23 * 3600),  # no iat: measured from now
        _signed(iat=now - 3600, exp=now + 23 * 3600),
    ):
        assert (await default.get(f"{T}/", headers=fine)).status_code == 200
    short = await client_for(gateway(stores, admin_jwt_max_lifetime=60))
    assert (await short.get(f"{T}/", headers=_signed(iat=now, exp=now + 60))).status_code == 200
    assert_problem(
        await short.get(f"{T}/", headers=_signed(iat=now, exp=now + 61)), 401, "invalid_api_key"
    )
    unlimited = await client_for(gateway(stores, admin_jwt_max_lifetime=None))
    assert (await unlimited.get(f"{T}/", headers=_signed(exp=4_102_444_800))).status_code == 200
    assert_problem(await unlimited.get(f"{T}/", headers=_signed(exp=1e308)), 401, "invalid_api_key")


async def test_an_operator_subject_with_control_characters_is_recorded_escaped(
    stores: Stores, client_for: ClientFor
) -> None:
    """The finding: a NUL in ``sub`` suspended the tenant, then the audit insert failed (500,
    no entry). A bidi override or a line break would disguise or forge an entry."""
    client = await client_for(gateway(stores))
    tenant = await register(client)
    subject = "ops\x00\u202eexe.\nfake\\u{0}" + "x" * 1000
    response = await client.post(
        f"{T}/{tenant['id']}/suspend", headers=operator_headers(sub=subject)
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "suspended"
    log = (await client.get(f"{T}/{tenant['id']}/audit", headers=operator_headers())).json()
    entry = log["items"][0]
    assert entry["action"] == "tenant.suspend"
    expected = "operator:ops\\u{0}\\u{202e}exe.\\u{a}fake\\\\u{0}" + "x" * 1000
    assert entry["actor"] == expected[:199] + "…" and len(entry["actor"]) == 200
    assert entry["actor"].isprintable()


async def test_only_changes_made_are_recorded(stores: Stores, client_for: ClientFor) -> None:
    """Each entry is written in the step of the change it records (deletion used to write its
    entry before deleting), and a refused change leaves none."""
    gw = gateway(stores)
    client = await client_for(gw)
    tenant = await register(client)
    url = f"{T}/{tenant['id']}"
    assert_problem(
        await client.delete(f"{url}/users/usr_nope", headers=auth(tenant)), 404, "not_found"
    )
    duplicate = {"email": "admin@acme.com"}
    assert_problem(
        await client.post(f"{url}/users", json=duplicate, headers=auth(tenant)), 409, "user_exists"
    )
    assert_problem(
        await client.put(f"{url}/plan", json={"plan": "nope"}, headers=auth(tenant)),
        422,
        "validation_error",
    )
    assert (await client.delete(url, headers=operator_headers())).status_code == 204
    assert_problem(await client.delete(url, headers=operator_headers()), 404, "not_found")
    entries = await gw.services.directory.list_audit(tenant["id"], limit=10, before=None)
    assert [(e.action, e.actor) for e in entries] == [
        ("tenant.delete", "operator:ops@example.com"),
        ("tenant.register", "anonymous"),
    ]


@pytest.fixture
def real(postgres_url: str, redis_url: str, redis_prefix: str) -> Stores:
    return Stores("real", postgres_url, redis_url, redis_prefix)


async def test_a_change_whose_audit_entry_fails_is_not_made(
    real: Stores, client_for: ClientFor
) -> None:
    """A real failure of the audit insert, for one operator only: a CHECK constraint on
    ``tg_audit`` refuses that operator's entries. Every change that operator makes must then
    fail whole (500) and leave nothing behind."""
    gw = gateway(real)
    client = await client_for(gw)
    raw = httpx.AsyncClient(  # a 500 as a response, not re-raised into the test
        transport=httpx.ASGITransport(app=gw, raise_app_exceptions=False), base_url="http://t"
    )
    tenant = await register(client)
    url = f"{T}/{tenant['id']}"
    key = await new_key(client, tenant, name="k")
    user = (
        await client.post(f"{url}/users", json={"email": "u@x.io"}, headers=auth(tenant))
    ).json()
    exported = await client.get(f"{url}/export", headers=operator_headers())
    assert exported.status_code == 200
    before = await _snapshot(client, url)
    tenants_before = await tenant_count(client)
    constraint = f"refuse_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(real.database_url)
    await conn.execute(
        f"ALTER TABLE tg_audit ADD CONSTRAINT {constraint}"
        " CHECK (actor <> 'operator:audit-fails') NOT VALID"
    )
    refused = operator_headers(sub="audit-fails")
    attempts = [
        ("POST", f"{T}/register", {"name": "N", "admin_email": "n@x.io"}),
        ("POST", f"{url}/suspend", None),
        ("PATCH", url, {"name": "Renamed"}),
        ("PUT", f"{url}/plan", {"plan": "professional"}),
        ("POST", f"{url}/users", {"email": "v@x.io"}),
        ("PATCH", f"{url}/users/{user['id']}", {"role": "viewer"}),
        ("DELETE", f"{url}/users/{user['id']}", None),
        ("POST", f"{url}/keys", {"name": "new"}),
        ("DELETE", f"{url}/keys/{key['id']}", None),
        ("POST", f"{url}/keys/{key['id']}/rotate", {"grace_seconds": 0}),
        ("PUT", f"{url}/webhook", {"url": "https://93.184.216.34/hook"}),
        ("DELETE", url, None),
    ]
    try:
        for method, target, body in attempts:
            response = await raw.request(method, target, json=body, headers=refused)
            assert response.status_code == 500, (method, target, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        # app_only: nothing of the tenant's own export collides, the import would succeed
        imported = await raw.post(
            f"{url}/import?app_only=true", content=exported.content, headers=refused
        )
        assert imported.status_code == 500, imported.text
    finally:
        await conn.execute(f"ALTER TABLE tg_audit DROP CONSTRAINT {constraint}")
        await conn.close()
        await raw.aclose()
    assert await _snapshot(client, url) == before
    assert await tenant_count(client) == tenants_before
    assert (await client.get("/whoami", headers=auth(key))).status_code == 200
    # the same requests by another operator go through: the refusal was the audit insert's
    again = await client.post(
        f"{url}/import?app_only=true", content=exported.content, headers=operator_headers()
    )
    assert again.status_code == 200, again.text
    assert (await client.post(f"{url}/suspend", headers=operator_headers())).status_code == 200


async def _snapshot(client: Any, url: str) -> dict[str, Any]:
    """What the tenant looks like to an operator: profile, users, keys, webhook, audit."""
    headers = operator_headers()
    return {
        path: (await client.get(f"{url}{path}", headers=headers)).json()
        for path in ("", "/users", "/keys", "/webhook", "/audit")
    }


async def test_the_audit_trail_is_append_only(real: Stores, client_for: ClientFor) -> None:
    """No role the gateway runs as may rewrite or erase an entry: not the owner role its own
    work runs under, not the runtime role the app runs under; the trigger stops even the
    superuser login the tests use."""
    client = await client_for(gateway(real))
    tenant = await register(client)
    conn = await asyncpg.connect(real.database_url)
    try:
        statements = [
            "UPDATE tg_audit SET actor = 'someone else'",
            "DELETE FROM tg_audit",
            "TRUNCATE tg_audit",
        ]
        roles = [
            "SET LOCAL ROLE tenant_gateway_owner",
            "SELECT set_config('role', 'tenant_gateway_app', true),"
            f" set_config('tenant_gateway.tenant_id', '{tenant['id']}', true)",
            "SELECT 1",  # the login itself (a superuser here)
        ]
        for role in roles:
            for statement in statements:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with conn.transaction():
                        await conn.execute(role)
                        await conn.execute(statement)
        count = await conn.fetchval(
            "SELECT count(*) FROM tg_audit WHERE tenant_id = $1 AND actor = 'anonymous'",
            tenant["id"],
        )
        assert count == 1
    finally:
        await conn.close()


async def test_an_import_does_not_bring_audit_entries(real: Stores, client_for: ClientFor) -> None:
    """An export's audit rows are a record of the source: importing them would let a tenant
    write entries in its own trail ("operator:… deleted …") that the gateway never wrote."""
    client = await client_for(gateway(real))
    source = await register(client)
    target = await register(client, admin_email="admin@target.io")
    await new_key(client, source, name="source key")
    exported = await client.get(f"{T}/{source['id']}/export", headers=auth(source))
    assert b'"tg_audit"' in exported.content
    imported = await client.post(
        f"{T}/{target['id']}/import", content=exported.content, headers=auth(target)
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["skipped"]["tg_audit"] == 3  # register, key.create, export
    assert "tg_audit" not in imported.json()["imported"]
    log = (await client.get(f"{T}/{target['id']}/audit", headers=auth(target))).json()
    assert [e["action"] for e in log["items"]] == ["tenant.import", "tenant.register"]
