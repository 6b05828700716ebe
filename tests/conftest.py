"""Shared fixtures: a throw-away Postgres database, a private Redis namespace, a movable clock,
a Redis Cluster started for the run (``redis_cluster.py``).

Postgres and Redis are the real servers on this machine (TG_TEST_PG_ADMIN_URL,
TG_TEST_REDIS_URL override them). Under CI=true a missing server fails the run; locally
the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol

import asyncpg
import httpx
import jwt
import pytest
import redis

from benchmarks.bouncer import PgBouncer, find_pgbouncer
from tenant_gateway import TenantGateway

from .redis_cluster import cluster_prefix, cluster_url, redis_cluster  # noqa: F401 (fixtures)
from .sentinels import NoRedisServer, RedisProcess, SentinelGroup

PG_ADMIN_URL = os.environ.get(
    "TG_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"

BACKENDS = ["memory", "real"]


def unavailable(what: str, exc: BaseException) -> NoReturn:
    """The one rule for a real service that cannot be reached: skip locally, fail under CI."""
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing service is a failure)")
    pytest.skip(message)


class FakeClock:
    """An injected clock: tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = (start or datetime.now(UTC)).timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()


def _url_with_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for the whole run, dropped at the end."""
    name = f"tg_test_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(run(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)
    try:
        yield _url_with_database(PG_ADMIN_URL, name)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pgbouncer(postgres_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of the test PostgreSQL, for the run;
    ``pgbouncer.url(database_url)`` is a database through it."""
    binary = find_pgbouncer()
    if binary is None:
        missing = FileNotFoundError("no pgbouncer binary (scripts/test installs it)")
        unavailable("PgBouncer", missing)
    with PgBouncer(binary, PG_ADMIN_URL) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix private to one test; its keys are deleted afterwards."""
    prefix = f"tg-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A primary, its replica and three sentinels of their own (``tests/sentinels.py``), fresh
    for each test: the tests kill their nodes. Stopped at the end."""
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        group.start()
    except (NoRedisServer, AssertionError) as exc:
        group.stop()
        unavailable("a Redis Sentinel group", exc)
    yield group
    group.stop()


@pytest.fixture
def tls_sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """The same group speaking TLS only (a private CA's certificates, ``ca.pem``)."""
    from .test_redis_tls import make_certificates

    certificates = tmp_path / "certificates"
    certificates.mkdir()
    make_certificates(certificates)
    group = SentinelGroup(tmp_path / "sentinel", tls=certificates)
    try:
        group.start()
    except (NoRedisServer, AssertionError) as exc:
        group.stop()
        unavailable("a Redis Sentinel group with TLS", exc)
    yield group
    group.stop()


@pytest.fixture
def lone_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server the test may kill and start again; stopped at the end."""
    server = RedisProcess(tmp_path / "lone", "lone")
    try:
        server.start()
    except (NoRedisServer, AssertionError) as exc:
        server.stop()
        unavailable("a private redis-server", exc)
    yield server
    server.stop()


@pytest.fixture
def real_stores(postgres_url: str, redis_url: str, redis_prefix: str) -> tuple[str, ...]:
    """The CLI arguments that put a server on the real PostgreSQL and Redis (this test's keys)."""
    return (
        "--database-url", postgres_url,
        "--redis-url", redis_url,
        "--redis-key-prefix", redis_prefix,
    )  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 10, 12, 0, tzinfo=UTC))


@dataclass
class Stores:
    """Constructor arguments that select a backend: memory, or Postgres + Redis."""

    name: str
    database_url: str | None
    redis_url: str | None
    redis_key_prefix: str

    def kwargs(self) -> dict[str, Any]:
        return {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "redis_key_prefix": self.redis_key_prefix,
        }


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "memory":
        return Stores("memory", None, None, "tg:")
    database_url = request.getfixturevalue("postgres_url")
    prefix = request.getfixturevalue("redis_prefix")
    return Stores("real", database_url, REDIS_URL, prefix)


async def started(gateway: TenantGateway) -> TenantGateway:
    await gateway.startup()
    return gateway


class ClientFor(Protocol):
    """The ``client_for`` fixture: an httpx client on ``gateway``, started."""

    async def __call__(self, gateway: TenantGateway) -> httpx.AsyncClient: ...


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFor]:
    """``await client_for(gateway)`` → an httpx client on a started gateway; all closed after."""
    opened: list[tuple[TenantGateway, httpx.AsyncClient]] = []

    async def make(gateway: TenantGateway) -> httpx.AsyncClient:
        await gateway.startup()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://testserver"
        )
        opened.append((gateway, client))
        return client

    yield make
    for gateway, client in opened:
        await client.aclose()
        await gateway.shutdown()


async def register(client: httpx.AsyncClient, plan: str = "free", **extra: Any) -> dict[str, Any]:
    body = {"name": "Acme Corp", "plan": plan, "admin_email": "admin@acme.com", **extra}
    response = await client.post("/api/v1/tenants/register", json=body)
    assert response.status_code == 201, response.text
    tenant: dict[str, Any] = response.json()
    return tenant


def auth(tenant: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['api_key']}"}


JWT_SECRET = "operator-secret-for-tests-0123456789"


def operator_headers(secret: str = JWT_SECRET, **claims: Any) -> dict[str, str]:
    """An hour-long operator token (the gateway refuses tokens living over 24 h by default)."""
    now = int(time.time())
    payload = {"sub": "ops@example.com", "role": "operator", "iat": now, "exp": now + 3600}
    payload.update(claims)
    return {"Authorization": "Bearer " + jwt.encode(payload, secret, algorithm="HS256")}
