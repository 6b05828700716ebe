"""What several test modules share: problem assertions, tenants made through the API or the
directory, calls and usage reports through the API, plans by quota shape, an import stream, the
application tables of the transfer tests, a TCP proxy in front of a store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from tenant_gateway import TenantGateway
from tenant_gateway.demo import create_projects_table
from tenant_gateway.directory import MemoryDirectory
from tenant_gateway.keys import (
    generate_api_key,
    hash_api_key,
    key_display_prefix,
)
from tenant_gateway.models import ApiKeyRecord, Role, Tenant, TenantStatus, User
from tenant_gateway.postgres.isolation import isolate_table

from .apps import echo_app
from .conftest import PG_ADMIN_URL, auth, operator_headers
from .tcp_proxy import TcpProxy

T = "/api/v1/tenants"
PROBLEM = "application/problem+json"

TASKS = """
CREATE TABLE IF NOT EXISTS tasks (
    tenant_id  text NOT NULL,
    id         text NOT NULL,
    project_id text NOT NULL,
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    due        timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);
"""


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    return body


async def tenant_count(client: Any) -> int:
    """Every tenant in the store, paging through the operator listing."""
    count, after = 0, None
    while True:
        params = {"limit": 500, **({"after": after} if after else {})}
        page = (await client.get(f"{T}/", params=params, headers=operator_headers())).json()
        count += len(page["items"])
        after = page["next_after"]
        if after is None:
            return count


async def register_as(
    client: httpx.AsyncClient, email: str, plan: str = "professional"
) -> dict[str, Any]:
    response = await client.post(
        f"{T}/register", json={"name": email, "plan": plan, "admin_email": email}
    )
    assert response.status_code == 201, response.text
    tenant: dict[str, Any] = response.json()
    return tenant


async def prepare_app_tables(url: str) -> None:
    await create_projects_table(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext('tenant_gateway.demo'))")
        await conn.execute(TASKS)
        await isolate_table(conn, "tasks")
    finally:
        await conn.close()


async def as_admin(sql: str) -> None:
    """``sql`` run by the PostgreSQL superuser the tests log in as (databases, roles)."""
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def ndjson(lines: list[Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class CountingDirectory(MemoryDirectory):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def find_key(self, key_hash: bytes) -> Any:
        self.lookups += 1
        return await super().find_key(key_hash)


async def add_tenant(
    directory: CountingDirectory, *, expires_at: datetime | None = None
) -> tuple[str, Tenant]:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    tenant = Tenant(
        f"tenant_{generate_api_key()[3:11]}", "T", "free", TenantStatus.ACTIVE, None, "a@t.io", now
    )
    secret = generate_api_key()
    key = ApiKeyRecord(
        "key_1",
        tenant.id,
        hash_api_key(secret),
        key_display_prefix(secret),
        None,
        Role.ADMIN,
        now,
        expires_at,
    )
    await directory.register(tenant, User("usr_1", tenant.id, "a@t.io", Role.ADMIN, now), key)
    return secret, tenant


async def proxy_to(url: str) -> TcpProxy:
    target = urlsplit(url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 0)
    await proxy.start()
    return proxy


def through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")).geturl()


def gateway_via(redis_url: str, proxy: TcpProxy, prefix: str, **kwargs: Any) -> TenantGateway:
    """A gateway whose Redis is reached through ``proxy`` (memory directory)."""
    return TenantGateway(
        echo_app(), redis_url=through(redis_url, proxy), redis_key_prefix=prefix, **kwargs
    )


QUOTA_PLANS = {  # plans by quota shape: 100 calls, 10 without counting 5xx, no quota
    "plans": {
        "hundred": {
            "max_users": 5,
            "monthly_calls": 100,
            "burst_per_second": None,
            "price_cents": 0,
        },
        "lenient": {
            "max_users": 5,
            "monthly_calls": 10,
            "burst_per_second": None,
            "price_cents": 0,
            "count_server_errors": False,
        },
        "open": {
            "max_users": None,
            "monthly_calls": None,
            "burst_per_second": None,
            "price_cents": 0,
        },
    }
}


async def calls(client: Any, tenant: dict[str, Any], n: int, path: str = "/whoami") -> list[int]:
    responses = await asyncio.gather(*(client.get(path, headers=auth(tenant)) for _ in range(n)))
    return [r.status_code for r in responses]


async def usage(client: Any, tenant: dict[str, Any], **params: str) -> dict[str, Any]:
    response = await client.get(f"{T}/{tenant['id']}/usage", params=params, headers=auth(tenant))
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report
