"""``tenant-gateway serve``: the demo app behind the gateway under uvicorn, configured from the
command line (``options``) and handed to every worker process through the environment
(``build_app``); with the one-line failure every command prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis
import uvicorn

from tenant_gateway.accesslog import JsonFormatter, log_config
from tenant_gateway.demo import build_demo_app, create_projects_table
from tenant_gateway.exceptions import ConfigurationError, StoreBusy, StoreUnavailable
from tenant_gateway.middleware import TenantGateway
from tenant_gateway.options import from_environment, to_environment, values
from tenant_gateway.plans import PlanCatalog, load_plans
from tenant_gateway.postgres.database import Database
from tenant_gateway.redis.connect import open_counters
from tenant_gateway.redis.roles import WrongServer

__all__ = ["build_app", "fail", "preflight", "run", "unreachable"]


async def preflight(database_url: str | None, redis_url: str | None, *, demo: bool = False) -> None:
    """Connect to each configured store once, applying migrations (and with ``demo``, the
    demo's), so a bad URL or a table locked too long fails here, in one line."""
    if database_url:
        database = Database(database_url)
        try:
            await database.connect()
        finally:
            await database.close()
        if demo:
            await create_projects_table(database_url)
    if redis_url:
        counters = open_counters(redis_url)  # a bad URL: ConfigurationError
        try:
            await counters.ping()
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, WrongServer):  # it answers, and is not what we need
                raise ConfigurationError(f"--redis-url {exc.url}: {exc.reason}") from None
            raise
        finally:
            await counters.close()


def fail(message: str) -> int:
    print(f"tenant-gateway: error: {message}", file=sys.stderr)
    return 2


def unreachable(exc: StoreUnavailable, *, serving: bool = False) -> str:
    """The one line for a store that would not connect: what it said, and the fix for it."""
    flag = "--database-url" if exc.store == "PostgreSQL" else "--redis-url"
    cause = exc.__cause__
    if isinstance(exc, StoreBusy) or cause is None:
        return str(exc)
    if isinstance(cause, _LOGIN_REFUSED):
        fix = f"Fix the user or password in {flag}"
    elif isinstance(cause, asyncpg.InvalidCatalogNameError):
        name = urlsplit(exc.url).path.lstrip("/") or "NAME"
        fix = f"Create the database (createdb {name}) or fix its name in {flag}"
    elif isinstance(cause, socket.gaierror) or isinstance(cause.__cause__, socket.gaierror):
        fix = f"Fix the host name in {flag}"
    elif isinstance(cause, redis.ResponseError) and "DB index" in str(cause):
        fix = f"Use a database number the server has (0 to 15 unless configured) in {flag}"
    elif isinstance(cause, asyncpg.TooManyConnectionsError):
        fix = f"Lower pool_max_size in {flag}, or raise the server's max_connections"
    else:
        fix = f"Start {exc.store} there, or fix the host and port in {flag}"
    if serving:
        fix += " (or omit it: the store is then in memory)"
    return f"{str(exc).rstrip('.')}. {fix}."


_LOGIN_REFUSED = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    redis.AuthenticationError,
)


def build_app() -> TenantGateway:
    """The app ``serve`` runs, configured from the environment (for ``--workers`` > 1)."""
    settings = from_environment(os.environ)
    return TenantGateway(build_demo_app(settings["database_url"]), **settings)


def _unbindable(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on ``host:port`` (as it binds: ``SO_REUSEADDR``), if it
    could not; checked before the banner says the gateway serves there."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        return f"--host {host!r} is not an address to listen on ({exc.strerror}): fix --host"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return (
                f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port (or"
                " --host), or stop what listens there"
            )
    return None


def _example_plan(catalog: PlanCatalog, offered: list[str] | None) -> str:
    """A plan the banner's sign-up can choose: ``free`` if it may, else the cheapest."""
    names = offered or list(catalog)
    return "free" if "free" in names else min(names, key=lambda name: catalog[name].price_cents)


def _announce(lines: list[str], log_format: str) -> None:
    """The banner as it is, or as JSON log lines (a log pipeline reads nothing else)."""
    for line in lines:
        if log_format == "json":
            record = {"name": "tenant_gateway.serve", "levelname": "INFO", "msg": line}
            line = JsonFormatter().format(logging.makeLogRecord(record))
        print(line, flush=True)


@contextlib.contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """Workers share their metrics through files (prometheus_client's multiprocess mode): in a
    fresh directory for this run, removed after it. One set by the caller is used as it is."""
    if workers < 2 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="tg-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def run(args: argparse.Namespace) -> int:
    """Check everything, connect to each store once, then serve; every problem found before
    anything is printed is one line and exit code 2."""
    settings = values(args, "serve")
    catalog = load_plans(settings["plans"])
    offered = settings["signup_plans"]
    if offered is not None and not set(offered) <= set(catalog):
        return fail(f"--signup-plans must name plans of the catalogue: {', '.join(catalog)}")
    if settings["metrics_require_operator"] and not settings["metrics_path"]:
        return fail("--metrics-require-operator has no metrics to protect: --metrics-path is ''")
    if settings["metrics_require_operator"] and not settings["admin_jwt_secret"]:
        return fail(
            "--metrics-require-operator needs operator tokens: set TG_ADMIN_JWT_SECRET or"
            " --admin-jwt-secret"
        )
    database_url, redis_url = settings["database_url"], settings["redis_url"]
    try:
        asyncio.run(preflight(database_url, redis_url, demo=True))
    except StoreUnavailable as exc:
        return fail(unreachable(exc, serving=True))
    taken = _unbindable(settings["host"], settings["port"])
    if taken:
        return fail(taken)
    to_environment(args, os.environ)  # workers are processes: they read the environment
    if not (settings["console_secret"] or settings["admin_jwt_secret"]):
        # one signing key for every worker, so a console session works on each of them
        os.environ["TG_CONSOLE_SECRET"] = secrets.token_urlsafe(32)
    stores = (
        "PostgreSQL + Redis"
        if database_url and redis_url
        else ("memory" if not (database_url or redis_url) else "mixed")
    )
    base = f"http://{settings['host']}:{settings['port']}"
    register = f"curl -s -X POST {base}/api/v1/tenants/register -H 'Content-Type: application/json'"
    if not settings["allow_signup"]:  # sign-up is the operators'
        register += ' -H "Authorization: Bearer $(tenant-gateway token --sub you)"'
    plan = _example_plan(catalog, offered)
    body = json.dumps({"name": "Acme Corp", "plan": plan, "admin_email": "admin@acme.com"})
    banner = [
        f"tenant-gateway: serving the demo app on {base} (stores: {stores})",
        f"register a tenant:\n  {register} -d '{body}'",
    ]
    if not settings["allow_signup"] and not settings["admin_jwt_secret"]:
        banner.append(
            "note: sign-up is closed and operator tokens are off, so no tenant can register:"
            " set TG_ADMIN_JWT_SECRET or --admin-jwt-secret"
        )
    if bool(database_url) != bool(redis_url):
        banner.append(
            "note: only one of --database-url/--redis-url given; the other store is memory"
        )
    _announce(banner, settings["log_format"])
    with _metrics_directory(settings["workers"]):
        _serve(settings)
    return 0


def _serve(settings: dict[str, Any]) -> None:
    uvicorn.run(
        "tenant_gateway.serve:build_app",
        factory=True,
        host=settings["host"],
        port=settings["port"],
        workers=settings["workers"],
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=30,
        # The client address (limits, audit) follows X-Forwarded-For only from these proxies.
        forwarded_allow_ips=settings["forwarded_allow_ips"],
        log_config=log_config(settings["log_format"]),  # no tk_ key reaches the log
    )
