"""The console over plain HTTP: sessions, CSRF, expiry, roles, hostile input, escaping, the
headers, and the settings that move or remove it."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tenant_gateway import TenantGateway
from tenant_gateway.console import CONTENT_SECURITY_POLICY
from tenant_gateway.exceptions import ConfigurationError
from tenant_gateway.settings import Settings

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, auth, operator_headers, register
from .helpers import QUOTA_PLANS, calls

CONSOLE = "/api/v1/tenants/console"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _csrf(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


async def _signed_in(client: httpx.AsyncClient, credential: str) -> str:
    """Sign in; the CSRF token of the page signed in to."""
    form = await client.get(CONSOLE + "/sign-in")
    answer = await client.post(
        CONSOLE + "/sign-in", data={"csrf": _csrf(form), "credential": credential}
    )
    assert answer.status_code == 303, answer.text
    page = await client.get(answer.headers["location"])
    assert page.status_code == 200, page.text
    return _csrf(page)


@pytest.fixture
def gateway(clock: FakeClock) -> TenantGateway:
    return TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, clock=clock)


async def _key(client: httpx.AsyncClient, tenant: dict[str, Any], role: str) -> str:
    answer = await client.post(
        f"/api/v1/tenants/{tenant['id']}/keys", json={"role": role}, headers=auth(tenant)
    )
    assert answer.status_code == 201
    key: str = answer.json()["api_key"]
    return key


async def _keys(client: httpx.AsyncClient, tenant: dict[str, Any]) -> int:
    return len(
        (await client.get(f"/api/v1/tenants/{tenant['id']}/keys", headers=auth(tenant))).json()
    )


async def test_the_session_cookie_holds_no_key_and_the_headers_are_strict(
    gateway: TenantGateway, client_for: ClientFor
) -> None:
    client = await client_for(gateway)
    tenant = await register(client)
    form = await client.get(CONSOLE + "/sign-in")
    assert form.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert (
        "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    )
    assert form.headers["cache-control"] == "no-store"
    assert form.headers["x-frame-options"] == "DENY"
    answer = await client.post(
        CONSOLE + "/sign-in", data={"csrf": _csrf(form), "credential": tenant["api_key"]}
    )
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("tg_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and f"Path={CONSOLE}" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert tenant["api_key"] not in cookie and tenant["api_key"][3:20] not in cookie
    page = await client.get(answer.headers["location"])
    assert " style=" not in page.text and "<script>" not in page.text  # nothing inline

    secure = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="https://testserver"
    )
    async with secure:
        form = await secure.get(CONSOLE + "/sign-in")
        answer = await secure.post(
            CONSOLE + "/sign-in", data={"csrf": _csrf(form), "credential": tenant["api_key"]}
        )
        assert "Secure" in answer.headers["set-cookie"]


async def test_changes_need_the_sessions_csrf_token(
    gateway: TenantGateway, client_for: ClientFor
) -> None:
    client = await client_for(gateway)
    tenant = await register(client)
    csrf = await _signed_in(client, tenant["api_key"])
    create = f"{CONSOLE}/tenants/{tenant['id']}/keys"
    for data in ({}, {"csrf": ""}, {"csrf": csrf[:-2] + "xx"}, {"csrf": "a" * 5000}):
        refused = await client.post(create, data={**data, "name": "x"})
        assert refused.status_code == 403, refused.text
        assert "csrf_failed" in refused.text
    other = await client_for(gateway)  # another session's token is no good here
    other_csrf = await _signed_in(other, tenant["api_key"])
    assert (await client.post(create, data={"csrf": other_csrf})).status_code == 403
    assert await _keys(client, tenant) == 1
    created = await client.post(create, data={"csrf": csrf, "name": "ok", "role": "viewer"})
    assert created.status_code == 200 and "tk_" in created.text
    assert await _keys(client, tenant) == 2

    form = await client.get(CONSOLE + "/sign-in")  # sign-in itself: a token of its form
    refused = await client.post(CONSOLE + "/sign-in", data={"credential": tenant["api_key"]})
    assert refused.status_code == 403 and "csrf_failed" in refused.text
    assert _csrf(form)


async def test_sessions_expire_by_the_clock_and_end_with_their_key(
    gateway: TenantGateway, client_for: ClientFor, clock: FakeClock
) -> None:
    client = await client_for(gateway)
    tenant = await register(client)
    page = f"{CONSOLE}/tenants/{tenant['id']}"
    csrf = await _signed_in(client, tenant["api_key"])
    clock.advance(3600 - 1)
    assert (await client.get(page)).status_code == 200
    clock.advance(1)
    expired = await client.get(page)
    assert expired.status_code == 303
    assert expired.headers["location"] == CONSOLE + "/sign-in?reason=expired"
    refused = await client.post(page + "/keys", data={"csrf": csrf})
    assert refused.status_code == 401 and "Sign in again" in refused.text
    assert await _keys(client, tenant) == 1

    viewer = await _key(client, tenant, "viewer")
    await _signed_in(client, viewer)
    key_id = (await client.get(f"/api/v1/tenants/{tenant['id']}/keys", headers=auth(tenant))).json()
    revoked = next(k["id"] for k in key_id if k["role"] == "viewer")
    await client.delete(f"/api/v1/tenants/{tenant['id']}/keys/{revoked}", headers=auth(tenant))
    ended = await client.get(page)
    assert ended.headers["location"] == CONSOLE + "/sign-in?reason=ended"


async def test_sign_out_and_forged_cookies(gateway: TenantGateway, client_for: ClientFor) -> None:
    client = await client_for(gateway)
    tenant = await register(client)
    page = f"{CONSOLE}/tenants/{tenant['id']}"
    csrf = await _signed_in(client, tenant["api_key"])
    body, mac = client.cookies["tg_console"].split(".")
    stranger = await client_for(gateway)
    for forged in (body + "." + mac[::-1], body[:-4] + "AAAA." + mac, "x", "." * 3000, "a.b"):
        answer = await stranger.get(page, headers={"cookie": f"tg_console={forged}"})
        assert answer.status_code == 303
    answer = await stranger.get(page, headers={"cookie": f"tg_console={body}.{mac}"})
    assert answer.status_code == 200  # the same value, unforged, is a session
    out = await client.post(CONSOLE + "/sign-out", data={"csrf": csrf})
    assert out.status_code == 303 and 'tg_console=""' in out.headers["set-cookie"]
    assert (await client.get(page)).status_code == 303
    copied = await stranger.get(page, headers={"cookie": f"tg_console={body}.{mac}"})
    assert copied.status_code == 303  # a copy of the cookie ended with the session
    assert copied.headers["location"].endswith("/sign-in?reason=signed_out")


async def test_roles_are_the_admin_apis(gateway: TenantGateway, client_for: ClientFor) -> None:
    client = await client_for(gateway)
    tenant = await register(client)
    other = await register(client, admin_email="b@other.example")
    viewer = await _key(client, tenant, "viewer")
    csrf = await _signed_in(client, viewer)
    page = await client.get(f"{CONSOLE}/tenants/{tenant['id']}")
    assert 'id="keys"' in page.text and 'id="create-key"' not in page.text
    refused = await client.post(f"{CONSOLE}/tenants/{tenant['id']}/keys", data={"csrf": csrf})
    assert refused.status_code == 403 and "forbidden" in refused.text
    refused = await client.post(
        f"{CONSOLE}/tenants/{tenant['id']}/users", data={"csrf": csrf, "email": "a@b.co"}
    )
    assert refused.status_code == 403
    assert (await client.get(f"{CONSOLE}/tenants/{tenant['id']}/plan?plan=free")).status_code == 403
    assert await _keys(client, tenant) == 2
    assert (await client.get(f"{CONSOLE}/tenants/{other['id']}")).status_code == 404
    assert (await client.get(f"{CONSOLE}/tenants")).status_code == 403  # operators only

    billing = await _key(client, tenant, "billing")
    await _signed_in(client, billing)
    page = await client.get(f"{CONSOLE}/tenants/{tenant['id']}")
    assert 'id="invoices"' in page.text and 'id="keys"' not in page.text

    developer = await _key(client, tenant, "developer")
    form = await client.get(CONSOLE + "/sign-in")
    answer = await client.post(
        CONSOLE + "/sign-in", data={"csrf": _csrf(form), "credential": developer}
    )
    assert answer.status_code == 403 and "sign in with an admin" in answer.text
    form = await client.get(CONSOLE + "/sign-in")
    answer = await client.post(
        CONSOLE + "/sign-in", data={"csrf": _csrf(form), "credential": "tk_" + "x" * 40}
    )
    assert answer.status_code == 401 and "invalid_api_key" in answer.text


async def test_hostile_input_answers_4xx_pages(
    gateway: TenantGateway, client_for: ClientFor
) -> None:
    client = await client_for(gateway)
    tenant = await register(client)
    csrf = await _signed_in(client, tenant["api_key"])
    t = f"{CONSOLE}/tenants/{tenant['id']}"
    posts: list[tuple[str, dict[str, Any], int]] = [
        (t + "/users", {"data": {"csrf": csrf, "email": "not an email", "role": "viewer"}}, 422),
        (t + "/users", {"data": {"csrf": csrf, "email": "a@b.co", "role": "root"}}, 422),
        (t + "/keys", {"data": {"csrf": csrf, "role": "x" * 300}}, 422),
        (t + "/keys", {"data": {"csrf": csrf, "name": "n" * 5000}}, 422),
        (t + "/keys/key_nope/rotate", {"data": {"csrf": csrf, "grace_seconds": "-1"}}, 422),
        (t + "/keys/key_nope/rotate", {"data": {"csrf": csrf, "grace_seconds": "9" * 30}}, 422),
        (t + "/keys/%00/revoke", {"data": {"csrf": csrf}}, 404),
        (t + "/users/x%3Fy/remove", {"data": {"csrf": csrf}}, 404),
        (t + "/plan", {"data": {"csrf": csrf, "plan": "<b>gold</b>"}}, 422),
        (t + "/webhook", {"data": {"csrf": csrf, "url": "http://127.0.0.1/x"}}, 422),
        (t + "/keys", {"content": b"csrf=" + csrf.encode() + b"&name=\xff\xfe"}, 400),
        (t + "/keys", {"content": b"a=1&a=2&csrf=" + csrf.encode()}, 400),
        (t + "/keys", {"json": {"csrf": csrf}}, 415),
        (t + "/keys", {"data": {"csrf": csrf, "name": "x" * 20_000}}, 413),
        (CONSOLE + "/tenants/tenant_%E2%80%AE/keys", {"data": {"csrf": csrf}}, 404),
    ]
    for path, kwargs, status in posts:
        if "content" in kwargs:
            kwargs["headers"] = {"content-type": "application/x-www-form-urlencoded"}
        answer = await client.post(path, **kwargs)
        assert answer.status_code == status, (path, answer.status_code, answer.text[:300])
        assert answer.headers["content-type"].startswith("text/html")
    gets = [
        (t + "/invoices/2026-13", 422),
        (t + "/invoices/2999-01", 422),
        (t + "/invoices/1999-01", 404),
        (t + "/invoices/" + "9" * 500, 422),
        (t + "/plan?plan=%00", 422),
        (CONSOLE + "/nowhere", 404),
    ]
    for path, status in gets:
        answer = await client.get(path)
        assert answer.status_code == status, (path, answer.status_code, answer.text[:300])
    assert (await client.put(t)).status_code == 405
    assert await _keys(client, tenant) == 1


async def test_tenant_strings_are_escaped(gateway: TenantGateway, client_for: ClientFor) -> None:
    client = await client_for(gateway)
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    tenant = await register(client, name=hostile, admin_email="x@y.example")
    await _signed_in(client, tenant["api_key"])
    page = await client.get(f"{CONSOLE}/tenants/{tenant['id']}")
    assert hostile not in page.text and "<img" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img" in page.text


async def test_operators_sign_in_with_a_token(
    gateway: TenantGateway, client_for: ClientFor
) -> None:
    client = await client_for(gateway)
    tenants = []
    for i in range(30):  # an operator registers them: no sign-up limit
        body = {"name": f"T{i}", "admin_email": f"a{i}@b.co"}
        answer = await client.post(
            "/api/v1/tenants/register", json=body, headers=operator_headers()
        )
        tenants.append(answer.json())
    for _ in range(3):  # T7 uses the most of its quota
        await client.get("/whoami", headers=auth(tenants[7]))
    token = operator_headers()["Authorization"].removeprefix("Bearer ")
    csrf = await _signed_in(client, token)
    listing = await client.get(CONSOLE + "/tenants")
    assert listing.text.index(tenants[7]["id"]) < listing.text.index(tenants[0]["id"])
    assert "Page 1 of 2" in listing.text
    second = await client.get(CONSOLE + "/tenants?page=2")
    assert second.text.count('data-tenant-id="') == 5
    assert (await client.get(CONSOLE + "/tenants?page=x")).status_code == 422
    found = await client.get(CONSOLE + "/tenants?q=a12@")
    assert found.text.count('data-tenant-id="') == 1 and tenants[12]["id"] in found.text
    target = tenants[3]["id"]
    suspended = await client.post(f"{CONSOLE}/tenants/{target}/suspend", data={"csrf": csrf})
    assert suspended.status_code == 303
    assert (await client.get("/whoami", headers=auth(tenants[3]))).status_code == 403
    no_token = await client.post(f"{CONSOLE}/tenants/{target}/resume", data={"back": "x"})
    assert no_token.status_code == 403
    await client.post(f"{CONSOLE}/tenants/{target}/resume", data={"csrf": csrf})
    assert (await client.get("/whoami", headers=auth(tenants[3]))).status_code == 200


async def test_the_console_moves_or_is_off(client_for: ClientFor, clock: FakeClock) -> None:
    off = await client_for(TenantGateway(echo_app(), console_path=None, clock=clock))
    answer = await off.get(CONSOLE + "/sign-in")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    moved = await client_for(TenantGateway(echo_app(), console_path="/ui", clock=clock))
    assert (await moved.get("/api/v1/tenants/ui/sign-in")).status_code == 200
    tenant = await register(moved)
    form = await moved.get("/api/v1/tenants/ui/sign-in")
    assert "operator token" not in form.text  # no operator secret configured
    answer = await moved.post(
        "/api/v1/tenants/ui/sign-in", data={"csrf": _csrf(form), "credential": "eyJhbGciOi.x.y"}
    )
    assert answer.status_code == 401 and "not enabled" in answer.text
    assert (await moved.get(f"/api/v1/tenants/{tenant['id']}", headers=auth(tenant))).is_success
    for bad in ("ui", "/ui/", "/register", "/tenant_x", "/{x}", "/"):
        with pytest.raises(ConfigurationError):
            Settings(console_path=bad)
    with pytest.raises(ConfigurationError):
        Settings(console_secret="short")


async def test_the_webhook_section_lists_the_last_deliveries(client_for: ClientFor) -> None:
    """A tenant without a webhook reaches its 80 % mark: the event is listed as such."""
    gateway = TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, plans=QUOTA_PLANS)
    client = await client_for(gateway)
    tenant = await register(client, plan="hundred")
    page_url = f"{CONSOLE}/tenants/{tenant['id']}"
    await _signed_in(client, tenant["api_key"])
    assert "No quota event yet." in (await client.get(page_url)).text
    assert (await calls(client, tenant, 80)).count(200) == 80
    await gateway.services.events.drain()
    page = await client.get(page_url)
    row = re.search(r'<table id="deliveries">.*?<tbody>\s*<tr>(.*?)</tr>', page.text, re.S)
    assert row is not None, page.text
    assert re.findall(r"<td>(.*?)</td>", row.group(1))[0].startswith("80 % of ")
    assert "no webhook" in row.group(1)


async def test_a_session_works_on_every_process_sharing_the_console_secret(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """Two gateway processes on the same stores (``serve --workers 2``): signed in on one, the
    session is good on the other when they share ``console_secret``, and only then."""
    stores: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "redis_key_prefix": redis_prefix,
    }
    secret = "console-secret-for-tests-0123456789"
    first = TenantGateway(echo_app(), console_secret=secret, **stores)
    second = TenantGateway(echo_app(), console_secret=secret, **stores)
    stranger = TenantGateway(echo_app(), **stores)  # its own random key
    a, b, c = await client_for(first), await client_for(second), await client_for(stranger)
    tenant = await register(a)
    await _signed_in(a, tenant["api_key"])
    page = f"{CONSOLE}/tenants/{tenant['id']}"
    cookie = a.cookies["tg_console"]
    for client in (b, c):
        client.cookies = a.cookies
    assert (await b.get(page)).status_code == 200
    refused = await c.get(page)
    assert refused.status_code == 303
    csrf = _csrf(await a.get(page))
    assert (await a.post(CONSOLE + "/sign-out", data={"csrf": csrf})).status_code == 303
    b.cookies = {}
    ended = await b.get(page, headers={"cookie": f"tg_console={cookie}"})
    assert ended.status_code == 303  # signed out on the first process: over on the second
    assert refused.headers["location"].startswith(CONSOLE + "/sign-in")
