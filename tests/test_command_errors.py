"""Every configuration or connection problem of every command is one line on stderr that names
the fix, exit code 2, no traceback, and nothing printed as served (issue 20)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from benchmarks.launch import free_port, run_cli
from tenant_gateway import TenantGateway, serve
from tenant_gateway.cli import main
from tenant_gateway.options import OPTIONS

from .apps import echo_app
from .helpers import ndjson

COMMANDS = {
    "serve": ["serve"],
    "migrate": ["migrate"],
    "export": ["export", "--tenant", "tenant_x"],
    "import": ["import", "--tenant", "tenant_x"],
    "billing close": ["billing", "close", "--period", "2026-01"],
}
WITH_REDIS = ("serve", "import", "billing close")
WITH_PLANS = ("serve", "import", "billing close")


class Served(Exception):
    """``serve`` got past every check: the test would have served."""


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """No TG_* variable from outside, every one a test or ``serve`` sets restored after; and
    ``serve`` stops where it would start uvicorn, keeping the settings it would serve with."""
    for option in OPTIONS:
        if option.env:  # set first: monkeypatch restores only what it changed
            monkeypatch.setenv(option.env, "")
            monkeypatch.delenv(option.env)
    served: list[dict[str, Any]] = []

    def stop(settings: dict[str, Any]) -> None:
        served.append(settings)
        raise Served

    monkeypatch.setattr(serve, "_serve", stop)
    yield served


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """``argv`` fails as it must: exit 2, nothing on stdout, one line on stderr (returned)."""
    assert main(argv) == 2, argv
    out, err = capsys.readouterr()
    assert out == "", out
    assert err.count("\n") == 1 and err.startswith("tenant-gateway: error: "), err
    assert "Traceback" not in err
    return err


def _url(postgres_url: str, **parts: str) -> str:
    base = postgres_url.rsplit("/", 1)[0]
    if "user" in parts:
        base = base.replace("postgres@", f"{parts['user']}@")
    if "host" in parts:
        base = f"postgresql://postgres@{parts['host']}"
    return f"{base}/{parts.get('database', postgres_url.rsplit('/', 1)[1])}"


POSTGRES_PROBLEMS = {
    "login": ({"user": "tg_no_such_role"}, "Fix the user or password in --database-url"),
    "database": (
        {"database": "tg_no_such_database"},
        "Create the database (createdb tg_no_such_database) or fix its name in --database-url",
    ),
    "host": ({"host": "no-such-host.invalid:5432"}, "Fix the host name in --database-url"),
    "port": (
        {"host": "127.0.0.1:PORT"},
        "Start PostgreSQL there, or fix the host and port in --database-url",
    ),
}


@pytest.mark.parametrize("problem", POSTGRES_PROBLEMS)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_postgresql_that_refuses_names_the_fix(
    command: str, problem: str, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parts, fix = POSTGRES_PROBLEMS[problem]
    parts = {k: v.replace("PORT", str(free_port())) for k, v in parts.items()}
    url = _url(postgres_url, **parts)
    err = one_line(capsys, [*COMMANDS[command], "--database-url", url])
    assert f"cannot reach PostgreSQL at {url}" in err and fix in err
    assert ("(or omit it: the store is then in memory)" in err) == (command == "serve")


REDIS_PROBLEMS = {
    "login": ("redis://tg_nobody:wrong@127.0.0.1:6379/0", "Fix the user or password in"),
    "database": ("redis://127.0.0.1:6379/99", "Use a database number the server has"),
    "host": ("redis://no-such-host.invalid:6379/0", "Fix the host name in --redis-url"),
    "port": ("redis://127.0.0.1:PORT/0", "Start Redis there, or fix the host and port in"),
}


@pytest.mark.parametrize("problem", REDIS_PROBLEMS)
@pytest.mark.parametrize("command", WITH_REDIS)
def test_a_redis_that_refuses_names_the_fix(
    command: str, problem: str, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, fix = REDIS_PROBLEMS[problem]
    url = url.replace("PORT", str(free_port()))
    database = [] if command == "serve" else ["--database-url", postgres_url]
    err = one_line(capsys, [*COMMANDS[command], *database, "--redis-url", url])
    assert "cannot reach Redis at redis://" in err and fix in err and "wrong" not in err


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("plans.yaml", "plans: {}", "JSON (.json) or TOML (.toml) only, not .yaml"),
        ("absent.json", None, "cannot read plans file"),
        (
            "plans.json",
            '{"plans": {"pro": {"burst": 1, "monthly_quota": 5}}}',
            "plans.pro.burst: unknown field (the fields are max_users, monthly_calls,"
            " burst_per_second, price_cents, overage_cents_per_1000, currency,",
        ),
        ("plans.json", '{"tiers": {}}', 'tiers: unknown field (the document is {"plans":'),
    ],
)
@pytest.mark.parametrize("command", WITH_PLANS)
def test_a_bad_plans_file_says_what_is_wrong_before_connecting(
    command: str,
    name: str,
    content: str | None,
    said: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plans = tmp_path / name
    if content is not None:
        plans.write_text(content)
    # A database nothing listens on: the file is checked before any connection.
    database = ["--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"]
    err = one_line(capsys, [*COMMANDS[command], *database, "--plans", str(plans)])
    assert said in err


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        ([], {"TG_FLUSH_INTERVAL": "abc"}, "--flush-interval (from TG_FLUSH_INTERVAL) must be a"),
        ([], {"TG_TRANSFER_MIN_RATE": "-1"}, "--transfer-min-rate (from TG_TRANSFER_MIN_RATE)"),
        ([], {"TG_ADMIN_JWT_MAX_LIFETIME": "soon"}, "must be a duration such as 30m, 12h or 7d"),
        ([], {"TG_LOG_FORMAT": "xml"}, "--log-format (from TG_LOG_FORMAT) must be text or json"),
        ([], {"TG_METRICS_PATH": "metrics"}, "--metrics-path (from TG_METRICS_PATH) must start"),
        ([], {"TG_METRICS_REQUIRE_OPERATOR": "sure"}, "TG_METRICS_REQUIRE_OPERATOR must be true"),
        (["--port", "99999"], {}, "--port must be a port number (0 to 65535), got '99999'"),
        (["--workers", "0"], {}, "--workers must be an integer >= 1, got '0'"),
        (["--signup-plans", ","], {}, "--signup-plans must name at least one"),
        (
            ["--metrics-require-operator"],
            {},
            "needs operator tokens: set TG_ADMIN_JWT_SECRET or --admin-jwt-secret",
        ),
        (["--admin-jwt-secret", "short-secret"], {}, "--admin-jwt-secret must be at least 32"),
        ([], {"TG_ADMIN_JWT_SECRET": "short-secret"}, "(from TG_ADMIN_JWT_SECRET) must be at"),
    ],
)
def test_a_bad_serve_setting_names_its_flag_and_variable(
    argv: list[str],
    env: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    err = one_line(capsys, ["serve", *argv])
    assert said in err and "short-secret" not in err


def test_a_taken_port_or_an_unknown_host_is_refused_before_the_banner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        err = one_line(capsys, ["serve", "--port", port])
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in err
    assert "choose another --port" in err
    err = one_line(capsys, ["serve", "--host", "no-such-host.invalid"])
    assert "--host 'no-such-host.invalid' is not an address to listen on" in err


def test_a_short_secret_is_refused_before_anything_is_printed_as_served() -> None:
    """The whole process: nothing on stdout (the banner comes after every check)."""
    result = run_cli("serve", "--port", str(free_port()), "--admin-jwt-secret", "x" * 31)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "--admin-jwt-secret must be at least 32 characters (it has 31)" in line
    assert "x" * 31 not in line and "secrets.token_urlsafe" in line


def test_operator_tokens_from_the_flag_satisfy_the_metrics_setting(
    environment: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Served):
        main(["serve", "--metrics-require-operator", "--admin-jwt-secret", "s" * 32])
    assert environment[0]["admin_jwt_secret"] == "s" * 32
    assert "serving the demo app" in capsys.readouterr().out


def test_serve_takes_its_variables_and_hands_them_to_the_workers(
    environment: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"plans": {"starter": _plan(0)}}))
    monkeypatch.setenv("TG_PLANS", str(plans))
    monkeypatch.setenv("TG_FLUSH_INTERVAL", "0.5")
    with pytest.raises(Served):
        main(["serve", "--redis-key-prefix", "gw2:"])
    (settings,) = environment
    assert settings["plans"] == str(plans) and settings["usage_flush_interval"] == 0.5
    assert '"plan": "starter"' in capsys.readouterr().out
    handed = {name: os.environ.get(name) for name in ("TG_PLANS", "TG_FLUSH_INTERVAL")}
    assert handed == {"TG_PLANS": str(plans), "TG_FLUSH_INTERVAL": "0.5"}
    assert os.environ["TG_REDIS_KEY_PREFIX"] == "gw2:"


def _plan(price: int) -> dict[str, int | None]:
    return {"max_users": 5, "monthly_calls": 100, "burst_per_second": None, "price_cents": price}


@pytest.mark.parametrize(
    ("plans", "extra", "suggested"),
    [
        (None, [], "free"),
        ({"scale": _plan(900), "starter": _plan(0)}, [], "starter"),
        ({"scale": _plan(900), "starter": _plan(0)}, ["--signup-plans", "scale"], "scale"),
    ],
)
def test_the_banner_suggests_a_plan_sign_up_may_choose(
    plans: dict[str, Any] | None,
    extra: list[str],
    suggested: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["serve", *extra]
    if plans is not None:
        (tmp_path / "plans.json").write_text(json.dumps({"plans": plans}))
        argv += ["--plans", str(tmp_path / "plans.json")]
    with pytest.raises(Served):
        main(argv)
    out = capsys.readouterr().out
    assert f'"plan": "{suggested}"' in out and out.count('"plan"') == 1, out
    assert "Authorization" not in out


def test_with_sign_up_closed_the_banner_registers_as_an_operator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Served):
        main(["serve", "--no-signup", "--admin-jwt-secret", "s" * 32])
    out = capsys.readouterr().out
    assert '-H "Authorization: Bearer $(tenant-gateway token --sub you)"' in out
    assert "no tenant can register" not in out
    monkeypatch.delenv("TG_ADMIN_JWT_SECRET")  # serve handed it on to its workers
    with pytest.raises(Served):
        main(["serve", "--no-signup"])
    out = capsys.readouterr().out
    assert "note: sign-up is closed and operator tokens are off, so no tenant can register" in out


def test_export_and_import_of_an_unknown_tenant_say_what_to_do(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database = ["--database-url", postgres_url]
    err = one_line(capsys, ["export", "--tenant", "tenant_nope", *database])
    assert "no tenant 'tenant_nope' in" in err and "check --tenant and --database-url" in err
    err = one_line(capsys, ["import", "--tenant", "tenant_nope", *database])
    assert "an import loads into a registered tenant; register it there first" in err
    assert "POST /api/v1/tenants/register" in err and "as --tenant" in err


async def _usage_rows(database_url: str, tenant_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM tg_usage WHERE tenant_id = $1", tenant_id
        )
        return count
    finally:
        await conn.close()


async def test_import_checks_redis_before_it_writes(postgres_url: str, redis_url: str) -> None:
    """``--redis-url`` is used after the rows are written (to reset the imported periods'
    counters): an unreachable one must stop the import before, not leave it half done."""
    gateway = TenantGateway(echo_app(), database_url=postgres_url)
    await gateway.startup()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://t"
        ) as client:
            answer = await client.post(
                "/api/v1/tenants/register",
                json={"name": "Acme", "plan": "free", "admin_email": "a@acme.io"},
            )
    finally:
        await gateway.shutdown()
    tenant = answer.json()["id"]
    usage = {"tenant_id": tenant, "period": "2026-01", "field": "calls", "value": 7,
             "updated_at": "2026-01-31T00:00:00Z"}  # fmt: skip
    header = {"format": "tenant-gateway-export", "version": 1,
              "tables": [{"name": "tg_usage", "rows": 1}]}  # fmt: skip
    stream = ndjson([header, {"table": "tg_usage", "row": usage}])
    command = [sys.executable, "-m", "tenant_gateway.cli", "import", "--tenant", tenant,
               "--database-url", postgres_url, "--with-usage", "--redis-url"]  # fmt: skip

    def run(url: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*command, url], input=stream, capture_output=True, timeout=60)

    refused = await asyncio.to_thread(run, f"redis://127.0.0.1:{free_port()}/0")
    assert refused.returncode == 2 and refused.stdout == b"", refused
    assert b"Start Redis there" in refused.stderr and refused.stderr.count(b"\n") == 1
    assert await _usage_rows(postgres_url, tenant) == 0  # nothing written
    imported = await asyncio.to_thread(run, redis_url)  # the same stream, Redis up: it loads
    assert imported.returncode == 0, imported.stderr
    assert await _usage_rows(postgres_url, tenant) == 1
