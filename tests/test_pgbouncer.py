"""PostgreSQL behind PgBouncer in transaction pooling mode (issue 19), with
``?statement_cache_size=0``: migrations, a served gateway under concurrent sign-ups and calls,
and closing a period, all through a PgBouncer the suite starts (``conftest.pgbouncer``) whose
server pool is smaller than one gateway's own pool."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from benchmarks.bouncer import POOL_SIZE, PgBouncer
from benchmarks.launch import CLI, Server, free_port, log_problems, run_cli
from tenant_gateway import TenantGateway
from tenant_gateway.clock import Period
from tenant_gateway.demo import build_demo_app, create_projects_table
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.invoices import PostgresInvoices
from tenant_gateway.postgres.schema import migrate
from tenant_gateway.postgres.url import parse_postgres_url

from .apps import echo_app
from .conftest import FakeClock, auth, register
from .helpers import as_admin

pytestmark = pytest.mark.slow
T = "/api/v1/tenants"
SIGNUPS = 20
CALLS_PER_TENANT = 5  # 20 tenants x 5: the drill's 100 calls


@pytest.fixture
def empty_database(postgres_url: str) -> Iterator[str]:
    """A database of this test's own with no schema in it yet, dropped afterwards (even while
    PgBouncer still holds server connections to it)."""
    name = f"tg_test_pgb_{uuid.uuid4().hex[:10]}"
    asyncio.run(as_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _migration_names(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name FROM tg_schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [(row["version"], row["name"]) for row in rows]


async def test_migrations_at_once_apply_each_once(
    pgbouncer: PgBouncer, empty_database: str
) -> None:
    """Four connections through PgBouncer migrate an empty database at once: every migration
    is applied by exactly one of them, and each finds the schema complete."""
    url = parse_postgres_url(pgbouncer.url(empty_database))
    connections = [
        await asyncpg.connect(url.dsn, statement_cache_size=url.statement_cache_size)
        for _ in range(4)
    ]
    try:
        applied = await asyncio.gather(*(migrate(conn) for conn in connections))
        again = await asyncio.gather(*(migrate(conn) for conn in connections))
    finally:
        for conn in connections:
            await conn.close()
    everything = [name for _, name in await _migration_names(empty_database)]
    assert sorted(name for names in applied for name in names) == everything
    assert len(everything) >= 8 and again == [[], [], [], []]


async def test_two_migrate_commands_at_once(pgbouncer: PgBouncer, empty_database: str) -> None:
    url = pgbouncer.url(empty_database)
    processes = [
        await asyncio.create_subprocess_exec(
            *CLI, "migrate", "--database-url", url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    errors = [(await process.communicate())[1].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    versions = [version for version, _ in await _migration_names(empty_database)]
    assert versions == sorted(set(versions)) and len(versions) >= 8
    assert run_cli("migrate", "--database-url", url).returncode == 0  # and again: nothing held


def _ledger_calls(rows: list[asyncpg.Record]) -> dict[str, int]:
    return {row["tenant_id"]: row["value"] for row in rows}


async def test_drill(
    pgbouncer: PgBouncer, empty_database: str, redis_url: str, redis_prefix: str
) -> None:
    """The issue's drill: migrate, serve (two workers), 20 concurrent sign-ups, then 100
    concurrent calls; no 5xx, the usage exact in the API and, after shutdown, in the ledger."""
    url = pgbouncer.url(empty_database)
    migrated = run_cli("migrate", "--database-url", url, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    with Server(
        *("--database-url", url, "--redis-url", redis_url, "--redis-key-prefix", redis_prefix),
        *("--workers", "2", "--signup-rate", "unlimited", "--flush-interval", "0.5"),
    ) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            signups = await asyncio.gather(
                *(
                    client.post(
                        f"{T}/register",
                        json={"name": f"T{i}", "plan": "professional", "admin_email": "a@t.io"},
                    )
                    for i in range(SIGNUPS)
                )
            )
            assert [r.status_code for r in signups] == [201] * SIGNUPS, [r.text for r in signups]
            tenants = [r.json() for r in signups]

            async def calls(tenant: dict[str, Any]) -> list[int]:
                created = client.post(
                    "/api/v1/projects", json={"name": tenant["id"]}, headers=auth(tenant)
                )
                listed = [
                    client.get("/api/v1/projects", headers=auth(tenant))
                    for _ in range(CALLS_PER_TENANT - 1)
                ]
                return [r.status_code for r in await asyncio.gather(created, *listed)]

            statuses = await asyncio.gather(*(calls(t) for t in tenants))
            assert statuses == [[201] + [200] * (CALLS_PER_TENANT - 1)] * SIGNUPS
            for tenant in tenants:
                usage = await client.get(f"{T}/{tenant['id']}/usage", headers=auth(tenant))
                assert usage.json()["api_calls"] == CALLS_PER_TENANT, usage.text
                # Isolation through PgBouncer: each tenant sees its own project only.
                projects = await client.get("/api/v1/projects", headers=auth(tenant))
                assert [p["name"] for p in projects.json()] == [tenant["id"]]
    log = server.output()
    assert log_problems(log) == [], log
    conn = await asyncpg.connect(empty_database)
    try:
        ledger = _ledger_calls(
            await conn.fetch("SELECT tenant_id, value FROM tg_usage WHERE field = 'calls'")
        )
    finally:
        await conn.close()
    assert ledger == {t["id"]: CALLS_PER_TENANT + 1 for t in tenants}  # and the isolation GET


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=UTC)


@pytest.fixture
async def two_gateways(
    pgbouncer: PgBouncer, empty_database: str
) -> AsyncIterator[tuple[TenantGateway, TenantGateway, FakeClock]]:
    """Two gateways (two processes' worth of pools) on one database through PgBouncer, on one
    injected clock; their own closing loops wait an hour between looks."""
    clock = FakeClock(at("2026-10-20T00:00:00"))
    url = pgbouncer.url(empty_database)
    gateways = [
        TenantGateway(echo_app(), database_url=url, clock=clock, usage_flush_interval=3600.0)
        for _ in range(2)
    ]
    for gateway in gateways:
        await gateway.startup()
    try:
        yield gateways[0], gateways[1], clock
    finally:
        for gateway in gateways:
            await gateway.shutdown()


async def test_closing_a_period(
    pgbouncer: PgBouncer,
    empty_database: str,
    two_gateways: tuple[TenantGateway, TenantGateway, FakeClock],
) -> None:
    """Workers at the turn of the month, again and again: the period's lock is held by one at a
    time and let go of every time (a session lock behind transaction pooling would stay on
    whichever server connection took it); each tenant gets one invoice, with its own number."""
    first, second, clock = two_gateways
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://t")
    other_worker = Database(pgbouncer.url(empty_database))
    await other_worker.connect()
    try:
        tenants = [await register(client, plan="professional") for _ in range(6)]
        clock.set(at("2026-11-01T00:05:00"))
        for _ in range(3):
            async with PostgresInvoices(other_worker).closing("2026-10") as held:
                assert held
                assert await first.services.billing.close_due() is None
                assert await second.services.billing.close_due() is None
        closed = await asyncio.gather(
            first.services.billing.close_due(), second.services.billing.close_due()
        )
        assert sum(count or 0 for count in closed) == len(tenants), closed
        assert await first.services.billing.close_period(Period(2026, 10)) == 0
        numbers = set()
        for tenant in tenants:
            url = f"{T}/{tenant['id']}/billing/invoices"
            (october,) = (await client.get(url, headers=auth(tenant))).json()
            numbers.add(october["number"])
        assert len(numbers) == len(tenants)
        async with PostgresInvoices(other_worker).closing("2026-10") as held:
            assert held  # nothing left holding it
    finally:
        await client.aclose()
        await other_worker.close()


async def test_export_and_import(pgbouncer: PgBouncer, empty_database: str) -> None:
    """Exports again and again, and two at once, then an import, through PgBouncer: the export
    reads through a cursor of its transaction, never a prepared statement left on a server
    connection for the next client to collide with (the last table read, an application
    table, is where one would be left)."""
    url = pgbouncer.url(empty_database)
    gateway = TenantGateway(build_demo_app(url), database_url=url)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://t")
    await gateway.startup()
    try:
        await create_projects_table(url)
        source = await register(client, plan="professional", admin_email="a@source.io")
        target = await register(client, plan="professional", admin_email="a@target.io")
        added = await client.post(
            f"{T}/{source['id']}/users", json={"email": "dev@source.io"}, headers=auth(source)
        )
        assert added.status_code == 201, added.text
        project = await client.post("/api/v1/projects", json={"name": "P"}, headers=auth(source))
        assert project.status_code == 201, project.text
    finally:
        await client.aclose()
        await gateway.shutdown()
    exports = [run_cli("export", "--tenant", source["id"], "--database-url", url) for _ in range(3)]
    together = await asyncio.gather(
        *(
            asyncio.create_subprocess_exec(
                *CLI, "export", "--tenant", tenant["id"], "--database-url", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            for tenant in (source, target)
        )
    )  # fmt: skip
    outputs = [await process.communicate() for process in together]
    assert [p.returncode for p in together] == [0, 0], outputs
    assert all(e.returncode == 0 for e in exports), [e.stderr for e in exports]
    assert len({e.stdout.split("\n", 1)[1] for e in exports}) == 1  # the rows, every time
    imported = subprocess.run(
        [*CLI, "import", "--tenant", target["id"], "--database-url", url],
        input=exports[0].stdout, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["imported"] == {"tg_users": 2, "projects": 1}


async def test_without_statement_cache_size_0_the_error_says_so(
    pgbouncer: PgBouncer, empty_database: str
) -> None:
    """By default asyncpg names its prepared statements ``__asyncpg_stmt_1__`` and up, counted
    per process, and PgBouncer lends each transaction any server connection: once every server
    connection holds the first statement of another process, a gateway on the plain URL fails
    at its first query. Start-up says so in one line, naming the fix."""
    plain = pgbouncer.url(empty_database, query="")
    others = [await asyncpg.connect(plain, statement_cache_size=0) for _ in range(POOL_SIZE)]
    try:
        inside = asyncio.Barrier(POOL_SIZE)

        async def leave_a_statement(conn: asyncpg.Connection[asyncpg.Record]) -> None:
            async with conn.transaction():  # all at once: one server connection each
                await inside.wait()
                await conn.execute('PREPARE "__asyncpg_stmt_1__" AS SELECT 1')

        await asyncio.gather(*(leave_a_statement(conn) for conn in others))
    finally:
        for conn in others:
            await conn.close()
    for command in (["migrate"], ["serve", "--port", str(free_port())]):
        result = run_cli(*command, "--database-url", plain)
        assert result.returncode == 2 and result.stdout == "", result
        assert result.stderr.count("\n") == 1, result.stderr
        assert "statement_cache_size=0" in result.stderr and "already exists" in result.stderr
    migrated = run_cli("migrate", "--database-url", pgbouncer.url(empty_database), timeout=60)
    assert migrated.returncode == 0, migrated.stderr


def test_a_login_pgbouncer_refuses_is_one_line(pgbouncer: PgBouncer, postgres_url: str) -> None:
    parts = urlsplit(pgbouncer.url(postgres_url))
    url = parts._replace(netloc=f"tg_stranger:s3cret@{parts.hostname}:{parts.port}").geturl()
    for command in (["migrate"], ["export", "--tenant", "t"]):
        result = run_cli(*command, "--database-url", url)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result
        assert "authentication failed" in result.stderr and "s3cret" not in result.stderr
