"""The usage ledger: flushes, restoring lost counters from it, refunds, the route and status
breakdowns, CSV, past periods, and rows it must refuse."""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router

from tenant_gateway import TenantGateway
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.ledger import PostgresLedger
from tenant_gateway.quota import MemoryCounters
from tenant_gateway.tallies import MAX_ROUTES, OTHER_ROUTES

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, Stores, auth, register
from .helpers import QUOTA_PLANS, T, calls, usage


def gateway(stores: Stores, **kwargs: Any) -> TenantGateway:
    return TenantGateway(
        echo_app(), admin_jwt_secret=JWT_SECRET, plans=QUOTA_PLANS, **stores.kwargs(), **kwargs
    )


async def test_flushes_are_idempotent(stores: Stores, client_for: ClientFor) -> None:
    gw = gateway(stores)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    await calls(client, tenant, 7)
    key = (tenant["id"], datetime.now(UTC).strftime("%Y-%m"))
    await gw.flush()
    first = await gw.services.ledger.read(key)
    assert first["calls"] == 7 and "hydrated" not in first
    await gw.flush()
    stale = {field: value - 1 for field, value in first.items()}
    await gw.services.ledger.write({key: stale})  # an older snapshot, replayed late
    await gw.services.ledger.write({key: first})  # a duplicated one
    assert await gw.services.ledger.read(key) == first


async def test_lost_counters_are_restored_from_the_ledger(
    stores: Stores, client_for: ClientFor
) -> None:
    """Redis loses the tenant's counters mid-month; the quota must not start again from zero.
    The bound: admissions beyond the quota equal the calls made since the last flush."""
    gw = gateway(stores)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    assert (await calls(client, tenant, 60)).count(200) == 60
    await gw.flush()
    unflushed = (await calls(client, tenant, 10)).count(200)
    period = datetime.now(UTC).strftime("%Y-%m")
    if stores.name == "real":
        assert stores.redis_url is not None
        raw = aioredis.Redis.from_url(stores.redis_url)
        assert await raw.delete(f"{stores.redis_key_prefix}usage:{{{tenant['id']}}}:{period}")
        await raw.aclose()
    else:
        counters = gw.services.counters
        assert isinstance(counters, MemoryCounters)
        await counters.forget([(tenant["id"], period)])
    after = await calls(client, tenant, 100)
    admitted_total = 60 + unflushed + after.count(200)
    assert after.count(200) == 40  # restored to 60, not to 0
    assert admitted_total - 100 == unflushed == 10  # the measured bound: one interval's traffic
    report = await usage(client, tenant)
    assert report["api_calls"] == 100 and report["remaining"] == 0


async def test_refunds_for_server_errors(stores: Stores, client_for: ClientFor) -> None:
    gw = gateway(stores)
    client = await client_for(gw)
    tenant = await register(client, plan="lenient")  # 10 calls, 5xx not counted
    assert await calls(client, tenant, 4, "/fail") == [503] * 4
    assert await calls(client, tenant, 3) == [200] * 3
    report = await usage(client, tenant)
    assert report["api_calls"] == 3 and report["refunded_calls"] == 4
    assert report["by_day"][0]["api_calls"] == 3
    assert (await calls(client, tenant, 8)).count(200) == 7  # the refunded calls freed quota


async def test_route_template_cardinality(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client, plan="open")
    for start in range(0, 10_000, 500):
        statuses = await calls_to(
            client, tenant, [f"/items/{i}" for i in range(start, start + 500)]
        )
        assert statuses == {200}
    report = await usage(client, tenant)
    assert [r["route"] for r in report["by_route"]] == ["GET /items/{item_id}"]
    assert report["by_route"][0]["calls"] == 10_000 == report["api_calls"]


async def calls_to(
    client: Any, tenant: dict[str, Any], paths: list[str], **headers: str
) -> set[int]:
    sent = {**auth(tenant), **headers}
    responses = await asyncio.gather(*(client.get(p, headers=sent) for p in paths))
    return {r.status_code for r in responses}


async def org_items(request: Request) -> Response:
    return JSONResponse(request.path_params)


def mounted_app() -> Starlette:
    org = [
        Route("/items", org_items),
        Mount("/teams/{team}", routes=[Route("/items/{item_id}", org_items)]),
    ]
    return Starlette(
        routes=[
            Mount("/orgs/{org}", routes=org),
            Mount("/files/{bucket}", app=PlainTextResponse("a file")),  # an app, not routes
        ]
    )


async def test_a_mount_counts_under_its_template(stores: Stores, client_for: ClientFor) -> None:
    """Under ``Mount("/orgs/{org}")`` each org is not a route of its own: a tenant calling
    ever new orgs would grow its usage hash (and every read of it) without limit."""
    gw = TenantGateway(
        mounted_app(), admin_jwt_secret=JWT_SECRET, plans=QUOTA_PLANS, **stores.kwargs()
    )
    client = await client_for(gw)
    tenant = await register(client, plan="open")
    paths = [f"/orgs/o{i}/items" for i in range(300)]
    paths += [f"/orgs/o{i}/teams/t{i}/items/{i}" for i in range(50)]
    paths += [f"/files/b{i}/readme.txt" for i in range(50)]
    assert await calls_to(client, tenant, paths) == {200}
    report = await usage(client, tenant)
    assert {r["route"]: r["calls"] for r in report["by_route"]} == {
        "GET /orgs/{org}/items": 300,
        "GET /orgs/{org}/teams/{team}/items/{item_id}": 50,
        "GET /files/{bucket}": 50,
    }


async def test_routes_past_the_cap_count_together(stores: Stores, client_for: ClientFor) -> None:
    """Mounts under a ``Host`` route: their templates are not looked for, so every org's
    path reaches the counters, which keep ``MAX_ROUTES`` routes and count the rest together."""
    inner = Router(routes=[Mount("/orgs/{org}", routes=[Route("/items", org_items)])])
    app = Starlette(routes=[Host("{tenant}.example.com", app=inner)])
    gw = TenantGateway(app, admin_jwt_secret=JWT_SECRET, plans=QUOTA_PLANS, **stores.kwargs())
    client = await client_for(gw)
    tenant = await register(client, plan="open")
    paths = [f"/orgs/o{i}/items" for i in range(MAX_ROUTES + 20)]
    assert await calls_to(client, tenant, paths, host="acme.example.com") == {200}
    report = await usage(client, tenant)
    routes = {r["route"]: r["calls"] for r in report["by_route"]}
    assert len(routes) == MAX_ROUTES + 1 and routes[OTHER_ROUTES] == 20
    assert sum(routes.values()) == MAX_ROUTES + 20 == report["api_calls"]


async def test_csv_export(stores: Stores, client_for: ClientFor) -> None:
    client = await client_for(gateway(stores))
    tenant = await register(client, plan="hundred")
    await calls(client, tenant, 3)
    await calls(client, tenant, 1, "/items/9")
    for kwargs in ({"params": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        headers = {**auth(tenant), **kwargs.get("headers", {})}
        response = await client.get(
            f"{T}/{tenant['id']}/usage", params=kwargs.get("params"), headers=headers
        )
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert rows[0]["dimension"] == "total" and rows[0]["api_calls"] == "4"
        routes = {
            (r["key"], r["status_class"]): r["api_calls"] for r in rows if r["dimension"] == "route"
        }
        assert routes == {("GET /whoami", "2xx"): "3", ("GET /items/{item_id}", "2xx"): "1"}


async def test_past_periods_come_from_the_ledger(stores: Stores, client_for: ClientFor) -> None:
    clock = FakeClock(datetime(2026, 10, 31, 23, 59, 0, tzinfo=UTC))
    gw = gateway(stores, clock=clock)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    await calls(client, tenant, 5)
    await gw.flush()
    clock.set(datetime(2026, 11, 2, tzinfo=UTC))
    if stores.name == "real":  # the live counters are gone: only the ledger can answer
        assert stores.redis_url is not None
        raw = aioredis.Redis.from_url(stores.redis_url)
        await raw.delete(f"{stores.redis_key_prefix}usage:{{{tenant['id']}}}:2026-10")
        await raw.aclose()
    october = await usage(client, tenant, period="2026-10")
    assert october["api_calls"] == 5 and october["by_day"][0]["date"] == "2026-10-31"
    assert (await usage(client, tenant))["api_calls"] == 0


async def test_odd_method_tokens_share_one_bucket(stores: Stores, client_for: ClientFor) -> None:
    """Any token is a valid HTTP method: each must not become a usage field of its own."""
    client = await client_for(gateway(stores))
    tenant = await register(client, plan="open")
    odd = ["FOO+1", "FOO+2", "PROPFIND", "X" * 200, "M-SEARCH"]
    for method in odd:
        await client.request(method, "/whoami", headers=auth(tenant))
    await client.request("DELETE", "/whoami", headers=auth(tenant))
    routes = {r["route"]: r["calls"] for r in (await usage(client, tenant))["by_route"]}
    assert routes == {"OTHER /whoami": len(odd), "DELETE /whoami": 1}, routes


async def test_a_ledger_write_keeps_every_sound_row(stores: Stores, client_for: ClientFor) -> None:
    """Rows the ledger cannot hold (out of range, a NUL, a field too long for its index) are
    dropped one by one: the rest of the shared write lands."""
    gw = gateway(stores)
    await client_for(gw)
    good, bad = ("tenant_good", "2026-11"), ("tenant_bad", "2026-11")
    await gw.services.ledger.write(
        {
            bad: {
                "calls": 3,
                "refunded": -1,
                "rejected": 2**63 - 1,
                "route|2xx|GET /\x00": 1,
                "route|2xx|GET /" + secrets.token_hex(10_000): 1,
            },
            good: {"calls": 4, "route|2xx|GET /a": 4},
        }
    )
    assert await gw.services.ledger.read(good) == {"calls": 4, "route|2xx|GET /a": 4}
    assert await gw.services.ledger.read(bad) == {"calls": 3}


async def test_a_row_postgres_refuses_fails_only_itself(postgres_url: str) -> None:
    """What no check here foresaw and PostgreSQL refuses (a malformed period, a NUL in an id)
    costs its own row, not the flush of every tenant."""
    database = Database(postgres_url)
    await database.connect()
    ledger = PostgresLedger(database)
    try:
        good = ("tenant_fine", "2026-11")
        await ledger.write(
            {
                ("tenant_odd", "2026-1x"): {"calls": 1},
                ("tenant_\x00", "2026-11"): {"calls": 1},
                good: {"calls": 2, "rejected": 1},
            }
        )
        assert await ledger.read(good) == {"calls": 2, "rejected": 1}
    finally:
        await database.close()


async def test_rows_left_by_an_old_import_are_not_counted(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """Before imports were checked, a tenant could write its own ledger rows: a billion refunds
    and a route tally at the top of the integer range. Reports and invoices leave them out."""
    stores = Stores("real", postgres_url, redis_url, redis_prefix)
    gw = gateway(stores)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    assert await calls(client, tenant, 5) == [200] * 5
    await gw.flush()
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.executemany(
            "INSERT INTO tg_usage (tenant_id, period, field, value) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id, period, field) DO UPDATE SET value = EXCLUDED.value",
            [
                (tenant["id"], _period_now(), "refunded", 1_000_000_000),
                (tenant["id"], _period_now(), "route|2xx|GET /whoami", 2**63 - 1),
            ],
        )
    finally:
        await conn.close()
    await gw.services.counters.forget([(tenant["id"], _period_now())])
    assert (await calls(client, tenant, 96)).count(200) == 95  # the refunds lift nothing
    report = await usage(client, tenant)
    assert report["api_calls"] == 100 and report["refunded_calls"] == 0
    assert report["by_route"][0]["calls"] == 100 - 5  # the planted tally is left out


def _period_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m")
