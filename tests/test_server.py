"""The product over real HTTP: `tenant-gateway serve` started by the test, in both modes."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.launch import CLI, Server, free_port, run_cli
from tenant_gateway import cli
from tenant_gateway.serve import build_app

from .conftest import JWT_SECRET, operator_headers

pytestmark = pytest.mark.slow


@pytest.fixture(params=["memory", "real"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    """``serve(*extra_args)`` starts the CLI server on the parametrised stores."""
    store_args: tuple[str, ...] = ()
    if request.param == "real":
        store_args = request.getfixturevalue("real_stores")
    started: list[Server] = []

    def start(*extra: str) -> Server:
        srv = Server(*store_args, *extra)
        started.append(srv)
        srv.wait_ready()
        return srv

    yield start
    for srv in started:
        log = srv.stop()
        assert "Traceback" not in log, log


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve()


async def test_quick_start(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base) as client:
        tenant = (
            await client.post(
                "/api/v1/tenants/register",
                json={
                    "name": "Acme Corp",
                    "plan": "enterprise",
                    "max_users": 100,
                    "admin_email": "admin@acme.com",
                },
            )
        ).json()
        assert tenant["id"].startswith("tenant_") and tenant["status"] == "active"
        assert tenant["created_at"].endswith("Z") and tenant["api_key"].startswith("tk_")
        headers = {"Authorization": f"Bearer {tenant['api_key']}"}
        user = await client.post(
            f"/api/v1/tenants/{tenant['id']}/users",
            json={"email": "user@acme.com", "role": "developer"},
            headers=headers,
        )
        assert user.status_code == 201, user.text
        projects = await client.get("/api/v1/projects", headers=headers)
        assert projects.status_code == 200 and projects.json() == []
        usage = await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=headers)
        assert usage.json()["api_calls"] == 1
        assert usage.json()["users"] == 2


async def test_projects_are_tenant_scoped(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base) as client:
        keys = []
        for name in ("A", "B"):
            reg = await client.post(
                "/api/v1/tenants/register",
                json={"name": name, "plan": "professional", "admin_email": f"a@{name}.io"},
            )
            keys.append({"X-API-Key": reg.json()["api_key"]})
        a, b = keys
        created = await client.post("/api/v1/projects", json={"name": "secret"}, headers=a)
        assert created.status_code == 201
        project_id = created.json()["id"]
        await client.post("/api/v1/projects", json={"name": "mine"}, headers=b)
        assert [p["name"] for p in (await client.get("/api/v1/projects", headers=a)).json()] == [
            "secret"
        ]
        assert [p["name"] for p in (await client.get("/api/v1/projects", headers=b)).json()] == [
            "mine"
        ]
        for method in ("GET", "DELETE"):
            probe = await client.request(method, f"/api/v1/projects/{project_id}", headers=b)
            assert probe.status_code == 404
            assert probe.headers["content-type"] == "application/problem+json"
        assert (await client.get(f"/api/v1/projects/{project_id}", headers=a)).status_code == 200
        assert (await client.delete(f"/api/v1/projects/{project_id}", headers=a)).status_code == 204
        assert (await client.get(f"/api/v1/projects/{project_id}", headers=a)).status_code == 404


QUOTA_PLANS = (
    '{"plans": {"free": {"max_users": 5, "monthly_calls": 1000,'
    ' "burst_per_second": null, "price_cents": 0}}}'
)


async def test_quota_exact_over_http_with_50_in_flight(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """1,100 calls over 64 connections against 1,000 calls/month → exactly 1,000 admitted."""
    plans = tmp_path / "plans.json"
    plans.write_text(QUOTA_PLANS)
    await assert_exact_quota(serve("--plans", str(plans)))


async def test_quota_exact_across_worker_processes(
    tmp_path: Path, real_stores: tuple[str, ...]
) -> None:
    """The same with two worker processes sharing the quota through Redis."""
    plans = tmp_path / "plans.json"
    plans.write_text(QUOTA_PLANS)
    server = Server(*real_stores, "--plans", str(plans), "--workers", "2")
    try:
        server.wait_ready()
        await assert_exact_quota(server)
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


async def assert_exact_quota(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base) as client:
        tenant = (
            await client.post(
                "/api/v1/tenants/register",
                json={"name": "Q", "admin_email": "q@q.io"},
            )
        ).json()
    headers = {"X-API-Key": tenant["api_key"]}
    in_flight = peak = 0
    statuses: list[int] = []

    async def connection() -> None:  # 64 connections × 17 or 18 calls = 1,100
        nonlocal in_flight, peak
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            while len(statuses) + in_flight < 1100:
                in_flight += 1
                peak = max(peak, in_flight)
                try:
                    response = await client.get("/api/v1/projects", headers=headers)
                finally:
                    in_flight -= 1
                statuses.append(response.status_code)

    await asyncio.gather(*(connection() for _ in range(64)))
    assert peak >= 50
    assert len(statuses) == 1100
    assert statuses.count(200) == 1000 and statuses.count(429) == 100
    async with httpx.AsyncClient(base_url=server.base) as client:
        usage = (await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=headers)).json()
    assert usage["api_calls"] == 1000 and usage["rejected_calls"] == 100


@pytest.mark.parametrize(
    ("flag", "url", "names"),
    [
        ("--database-url", "postgresql://postgres@127.0.0.1:1/nothing", "PostgreSQL"),
        ("--redis-url", "redis://127.0.0.1:1/0", "Redis"),
    ],
)
def test_unreachable_store_at_startup_is_one_clear_line(flag: str, url: str, names: str) -> None:
    result = run_cli("serve", "--port", str(free_port()), flag, url)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0] and "127.0.0.1:1" in lines[0] and flag in lines[0]


def test_bad_plans_file_is_one_clear_line(tmp_path: Path) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text('{"plans": {"x": {"max_users": -1}}}')
    result = run_cli("serve", "--plans", str(plans))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "plans.x.max_users: must be between 0 and" in line
    assert "plans.x.price_cents: required" in line


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--key-cache-ttl", "-1"), {}, "--key-cache-ttl"),
        (("--key-cache-size", "0"), {}, "--key-cache-size"),
        (("--flush-interval", "0"), {}, "--flush-interval"),
        (("--key-cache-long-ttl", "-5"), {}, "--key-cache-long-ttl"),
        (("--key-cache-ttl", "soon"), {}, "--key-cache-ttl"),
        (("--key-cache-size", "1.5"), {}, "--key-cache-size"),
        ((), {"TG_KEY_CACHE_LONG_TTL": "a minute"}, "TG_KEY_CACHE_LONG_TTL"),
        ((), {"TG_KEY_CACHE_TTL": "inf"}, "TG_KEY_CACHE_TTL"),
        ((), {"TG_KEY_CACHE_SIZE": "-3"}, "TG_KEY_CACHE_SIZE"),
    ],
)
def test_out_of_range_serve_setting_is_one_clear_line(
    args: tuple[str, ...], env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_cli("serve", "--port", str(free_port()), *args)
    assert result.returncode == 2 and result.stdout == ""  # refused before anything is served
    assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr


def test_the_key_cache_settings_come_from_flags_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``serve`` reads (a flag, else its TG_ variable) and hands its workers."""
    monkeypatch.setenv("TG_KEY_CACHE_LONG_TTL", "120")
    monkeypatch.setenv("TG_KEY_CACHE_SIZE", "5000")
    args = cli._parser().parse_args(["serve", "--key-cache-ttl", "2"])
    read = (args.key_cache_ttl, args.key_cache_long_ttl, args.key_cache_size)
    assert read == ("2", "120", "5000")
    monkeypatch.setenv("TG_KEY_CACHE_TTL", "2.0")  # as run() hands them on
    settings = build_app().settings
    assert (settings.key_cache_ttl, settings.key_cache_long_ttl) == (2.0, 120.0)
    assert settings.key_cache_size == 5000


def test_migrate_is_idempotent(postgres_url: str) -> None:
    for _ in range(2):
        result = run_cli("migrate", "--database-url", postgres_url)
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout


# -- sign-up controls, client addresses, the access log (issue 17) ---------------------------


def register_body(plan: str = "free") -> dict[str, str]:
    return {"name": "Acme Corp", "plan": plan, "admin_email": "admin@acme.com"}


async def audit_ips(client: httpx.AsyncClient, tenant: dict[str, str]) -> list[str]:
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    audit = await client.get(f"/api/v1/tenants/{tenant['id']}/audit", headers=headers)
    assert audit.status_code == 200, audit.text
    return [entry["ip"] for entry in audit.json()["items"]]


async def test_access_log_never_prints_a_key() -> None:
    """A key sent in the URL used to be printed whole by uvicorn's access log."""
    server = Server()
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base) as client:
            tenant = (await client.post("/api/v1/tenants/register", json=register_body())).json()
            key = tenant["api_key"]
            in_query = await client.get(f"/api/v1/projects?api_key={key}")
            assert in_query.status_code == 401  # keys are read from headers only
            await client.get(f"/api/v1/tenants/{key}", headers={"X-API-Key": key})
            await client.get("/api/v1/projects?key=tk%5F" + key[3:])
            assert (await client.get("/api/v1/projects", headers={"X-API-Key": key})).is_success
    finally:
        log = server.stop()
    assert '"GET /api/v1/projects?api_key=tk_…redacted HTTP/1.1" 401' in log, log
    assert '"GET /api/v1/tenants/tk_…redacted HTTP/1.1" 404' in log, log
    assert '"GET /api/v1/projects?key=tk_…redacted HTTP/1.1" 401' in log, log
    assert key not in log and key[3:] not in log
    assert "Traceback" not in log


async def test_forwarded_for_is_ignored_by_default() -> None:
    """uvicorn used to trust X-Forwarded-For from 127.0.0.1: any local peer chose its audit IP."""
    server = Server()
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base) as client:
            registered = await client.post(
                "/api/v1/tenants/register",
                json=register_body(),
                headers={"X-Forwarded-For": "203.0.113.9"},
            )
            assert registered.status_code == 201, registered.text
            assert await audit_ips(client, registered.json()) == ["127.0.0.1"]
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


async def test_client_address_follows_forwarded_for_only_from_trusted_proxies() -> None:
    """By default X-Forwarded-For is ignored: it neither sets the audit IP nor gives a client a
    fresh sign-up allowance. A proxy named by --forwarded-allow-ips is believed."""
    untrusting = Server("--signup-rate", "2/hour")
    trusting = Server(
        "--forwarded-allow-ips", "127.0.0.1", "--no-signup", env={"TG_ADMIN_JWT_SECRET": JWT_SECRET}
    )
    try:
        untrusting.wait_ready()
        trusting.wait_ready()
        async with httpx.AsyncClient(base_url=untrusting.base) as client:
            answers = []
            for n in range(3):
                spoofed = {"X-Forwarded-For": f"203.0.113.{n}"}
                answers.append(
                    await client.post(
                        "/api/v1/tenants/register", json=register_body(), headers=spoofed
                    )
                )
            assert [a.status_code for a in answers] == [201, 201, 429]
            assert answers[2].headers["retry-after"].isdigit()
            assert await audit_ips(client, answers[0].json()) == ["127.0.0.1"]
        async with httpx.AsyncClient(base_url=trusting.base) as client:
            forwarded = {"X-Forwarded-For": "203.0.113.9"}
            anonymous = await client.post(
                "/api/v1/tenants/register", json=register_body(), headers=forwarded
            )
            assert anonymous.status_code == 401  # --no-signup: an operator registers
            registered = await client.post(
                "/api/v1/tenants/register",
                json=register_body(),
                headers={**forwarded, **operator_headers()},
            )
            assert registered.status_code == 201, registered.text
            assert await audit_ips(client, registered.json()) == ["203.0.113.9"]
    finally:
        logs = untrusting.stop() + trusting.stop()
    assert "Traceback" not in logs, logs


async def test_signup_limit_and_plans_hold_across_worker_processes(
    real_stores: tuple[str, ...],
) -> None:
    """Sign-ups are counted in Redis: two workers, fresh connections, one limit."""
    server = Server(
        *real_stores,
        "--workers", "2",
        "--signup-rate", "3/hour",
        "--signup-plans", "free,professional",
    )  # fmt: skip
    try:
        server.wait_ready()
        statuses = []
        for plan in ("enterprise", "free", "professional", "free", "free"):
            async with httpx.AsyncClient(base_url=server.base) as client:  # a new connection
                response = await client.post("/api/v1/tenants/register", json=register_body(plan))
                statuses.append(response.status_code)
    finally:
        log = server.stop()
    assert statuses == [422, 201, 201, 429, 429]
    assert "Traceback" not in log, log


async def test_plan_change_limit_holds_across_worker_processes(
    real_stores: tuple[str, ...],
) -> None:
    """--plan-change-rate reaches the workers (through the environment), whichever answers:
    one window per tenant, in Redis."""
    server = Server(*real_stores, "--workers", "2", "--plan-change-rate", "2/hour")
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base) as client:
            response = await client.post("/api/v1/tenants/register", json=register_body())
            tenant = response.json()
        statuses = []
        for plan in ("professional", "free", "professional", "enterprise"):
            async with httpx.AsyncClient(base_url=server.base) as client:  # a new connection
                response = await client.put(
                    f"/api/v1/tenants/{tenant['id']}/plan",
                    json={"plan": plan},
                    headers={"Authorization": f"Bearer {tenant['api_key']}"},
                )
                statuses.append(response.status_code)
    finally:
        log = server.stop()
    assert statuses == [200, 200, 429, 429]
    assert "Traceback" not in log, log


async def test_signup_closed_from_the_environment() -> None:
    server = Server(env={"TG_ALLOW_SIGNUP": "false"})
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base) as client:
            refused = await client.post("/api/v1/tenants/register", json=register_body())
    finally:
        server.stop()
    assert refused.status_code == 401 and refused.json()["code"] == "missing_api_key"


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--signup-rate", "often"), {}, "--signup-rate"),
        (("--auth-failure-rate", "0/minute"), {}, "--auth-failure-rate"),
        (("--signup-plans", "free,gold"), {}, "--signup-plans"),
        ((), {"TG_ALLOW_SIGNUP": "maybe"}, "TG_ALLOW_SIGNUP"),
        ((), {"TG_SIGNUP_RATE": "lots"}, "--signup-rate"),
        (("--plan-change-rate", "often"), {}, "--plan-change-rate"),
        ((), {"TG_PLAN_CHANGE_RATE": "0/hour"}, "--plan-change-rate"),
    ],
)
def test_bad_signup_setting_is_one_clear_line(
    args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [*CLI, "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
