"""Tenants on a plan the plans catalogue no longer has: one start-up warning naming them, and
503 ``plan_not_configured`` (a configuration error, no ``Retry-After``) on their calls, on the
memory store and on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tenant_gateway import TenantGateway
from tenant_gateway.keys import generate_api_key, hash_api_key, key_display_prefix
from tenant_gateway.models import ApiKeyRecord, Role, Tenant, TenantStatus, User
from tenant_gateway.services import MISSING_PLAN_LISTED

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, operator_headers
from .helpers import as_admin, assert_problem

T = "/api/v1/tenants"
FREE = {"max_users": 5, "monthly_calls": 1000, "burst_per_second": 10, "price_cents": 0}
ONLY_FREE = {"plans": {"free": FREE}}
CREATED = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (the memory store), or a PostgreSQL database of this test's own: the shared test
    database holds other tests' tenants on plans of their own."""
    if request.param == "memory":
        yield None
        return
    shared: str = request.getfixturevalue("postgres_url")
    name = f"tg_test_plans_{uuid.uuid4().hex[:10]}"
    asyncio.run(as_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield shared.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _seed(gateway: TenantGateway, tenant_id: str, plan: str) -> str:
    """A tenant on ``plan`` written straight into the directory (as a previous plans file let
    it be), with one admin key: the key."""
    directory = gateway.services.directory
    await directory.start()  # idempotent: the gateway's start-up finds it open
    tenant = Tenant(tenant_id, "T", plan, TenantStatus.ACTIVE, None, "a@t.io", CREATED)
    secret = generate_api_key()
    key = ApiKeyRecord(
        f"key_{tenant_id}",
        tenant_id,
        hash_api_key(secret),
        key_display_prefix(secret),
        None,
        Role.ADMIN,
        CREATED,
        None,
    )
    admin = User(f"usr_{tenant_id}", tenant_id, "a@t.io", Role.ADMIN, CREATED)
    await directory.register(tenant, admin, key)
    return secret


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tenant_gateway" and "plans catalogue does not have" in r.getMessage()
    ]


async def test_one_warning_lists_tenants_on_removed_plans(
    database_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """23 live tenants on two removed plans (and a deleted one, and one on a plan still
    there): one warning at start-up, naming the first 20 by id with their plans, and the
    count of the rest."""
    gateway = TenantGateway(echo_app(), database_url=database_url, plans=ONLY_FREE)
    removed = {f"tenant_{n:02d}": ("gold" if n % 2 else "silver") for n in range(23)}
    for tenant_id, plan in removed.items():
        await _seed(gateway, tenant_id, plan)
    await _seed(gateway, "tenant_a_free", "free")
    await _seed(gateway, "tenant_deleted", "gold")
    await gateway.services.directory.delete_tenant("tenant_deleted", CREATED)
    caplog.set_level(logging.WARNING, logger="tenant_gateway")
    await gateway.startup()
    try:
        (record,) = _warnings(caplog)
        message = record.getMessage()
        assert record.levelno == logging.WARNING
        assert message.startswith("23 tenant(s) are on plans")
        assert "plan_not_configured" in message and "plans file" in message
        listed = sorted(removed)[:MISSING_PLAN_LISTED]
        assert ", ".join(f"{t} ({removed[t]!r})" for t in listed) in message
        assert message.endswith(" and 3 more")
        for absent in ("tenant_20", "tenant_a_free", "tenant_deleted"):
            assert absent not in message
        await gateway.flush()  # a later flush or request logs nothing more
        assert len(_warnings(caplog)) == 1
    finally:
        await gateway.shutdown()


async def test_no_warning_when_every_plan_is_there(
    database_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = TenantGateway(echo_app(), database_url=database_url, plans=ONLY_FREE)
    await _seed(gateway, "tenant_free", "free")
    caplog.set_level(logging.WARNING, logger="tenant_gateway")
    await gateway.startup()
    await gateway.shutdown()
    assert _warnings(caplog) == []


def _assert_configuration_error(response: httpx.Response, plan: str) -> None:
    body = assert_problem(response, 503, "plan_not_configured")
    assert "retry-after" not in response.headers  # retrying cannot help: the operator must act
    assert "configuration error" in body["detail"]
    assert f"add plan {plan!r} to the plans file" in body["detail"]


async def test_calls_answer_configuration_error_until_the_tenant_moves(
    database_url: str | None, client_for: ClientFor
) -> None:
    """The tenant's calls, usage, invoice and user additions answer 503 plan_not_configured;
    an operator moving the tenant to a plan the catalogue has lets its calls through again."""
    clock = FakeClock(datetime(2026, 11, 20, tzinfo=UTC))

    gateway = TenantGateway(
        echo_app(),
        database_url=database_url,
        plans=ONLY_FREE,
        admin_jwt_secret=JWT_SECRET,
        clock=clock,
    )
    key = await _seed(gateway, "tenant_gold", "gold")
    client = await client_for(gateway)
    caller: dict[str, Any] = {"Authorization": f"Bearer {key}"}
    for _ in range(2):  # the second from the warm key cache
        _assert_configuration_error(await client.get("/whoami", headers=caller), "gold")
    url = f"{T}/tenant_gold"
    _assert_configuration_error(await client.get(f"{url}/usage", headers=caller), "gold")
    _assert_configuration_error(await client.get(f"{url}/billing/invoice", headers=caller), "gold")
    added = await client.post(
        f"{url}/users", json={"email": "dev@t.io", "role": "developer"}, headers=caller
    )
    _assert_configuration_error(added, "gold")
    # The tenant's own record still reads, so an operator can see and fix it.
    assert (await client.get(url, headers=operator_headers())).json()["plan"] == "gold"
    moved = await client.put(f"{url}/plan", json={"plan": "free"}, headers=operator_headers())
    assert moved.status_code == 200, moved.text
    assert (await client.get("/whoami", headers=caller)).status_code == 200
