"""``tenant-gateway serve``: the demo app behind the gateway under uvicorn, configured from the
command line and handed to every worker process through the environment (``build_app``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

import uvicorn

from tenant_gateway.accesslog import LOG_FORMATS, JsonFormatter, log_config
from tenant_gateway.client_limits import parse_rate
from tenant_gateway.demo import build_demo_app, create_projects_table
from tenant_gateway.exceptions import ConfigurationError, StoreBusy, StoreUnavailable
from tenant_gateway.middleware import TenantGateway
from tenant_gateway.netpolicy import WebhookPolicy
from tenant_gateway.plans import load_plans
from tenant_gateway.postgres.database import Database
from tenant_gateway.redis.connect import open_counters
from tenant_gateway.redis.roles import WrongServer

__all__ = ["build_app", "fail", "preflight", "run"]


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


def _env_flag(name: str, default: str = "true") -> bool:
    """A true/false environment setting (unset: ``default``)."""
    value = os.environ.get(name, default).strip().lower()
    if value not in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        raise ConfigurationError(f"{name} must be true or false, got {value!r}")
    return value in ("true", "1", "yes", "on")


def _plan_list(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _networks(text: str) -> list[str]:
    return [cidr.strip() for cidr in text.split(",") if cidr.strip()]


def build_app() -> TenantGateway:
    """The app ``serve`` runs, configured from the environment (for ``--workers`` > 1)."""
    database_url = os.environ.get("TG_DATABASE_URL") or None
    return TenantGateway(
        build_demo_app(database_url),
        database_url=database_url,
        redis_url=os.environ.get("TG_REDIS_URL") or None,
        plans=os.environ.get("TG_PLANS") or None,
        admin_jwt_secret=os.environ.get("TG_ADMIN_JWT_SECRET") or None,
        redis_key_prefix=os.environ.get("TG_REDIS_KEY_PREFIX", "tg:"),
        usage_flush_interval=float(os.environ.get("TG_FLUSH_INTERVAL", "1.0")),
        key_cache_ttl=float(os.environ.get("TG_KEY_CACHE_TTL", "1.0")),
        key_cache_long_ttl=float(os.environ.get("TG_KEY_CACHE_LONG_TTL", "60.0")),
        key_cache_size=int(os.environ.get("TG_KEY_CACHE_SIZE", "100000")),
        allow_signup=_env_flag("TG_ALLOW_SIGNUP"),
        signup_rate=os.environ.get("TG_SIGNUP_RATE") or "10/minute",
        signup_plans=_plan_list(os.environ.get("TG_SIGNUP_PLANS") or None),
        auth_failure_rate=os.environ.get("TG_AUTH_FAILURE_RATE") or "30/minute",
        plan_change_rate=os.environ.get("TG_PLAN_CHANGE_RATE") or "10/hour",
        transfer_idle_timeout=float(os.environ.get("TG_TRANSFER_IDLE_TIMEOUT", "10.0")),
        transfer_min_rate=int(os.environ.get("TG_TRANSFER_MIN_RATE") or 1024),
        transfer_max_duration=float(os.environ.get("TG_TRANSFER_MAX_DURATION") or 3600.0),
        webhook_allowed_networks=_networks(os.environ.get("TG_WEBHOOK_ALLOWED_NETWORKS", "")),
        metrics_path=os.environ.get("TG_METRICS_PATH", "/metrics") or None,
        metrics_require_operator=_env_flag("TG_METRICS_REQUIRE_OPERATOR", "false"),
    )


def _number(text: str, flag: str, kind: Callable[[str], float], least: float) -> tuple[str, str]:
    """``text``, the value of ``flag`` (or of its environment variable), checked to be a finite
    number no less than ``least``: (the variable that hands it to the workers, the number).
    Else a ``ConfigurationError`` naming both."""
    variable = "TG_" + flag.removeprefix("--").replace("-", "_").upper()
    try:
        value = kind(text.strip())
    except ValueError:
        value = math.nan
    if not least <= value < math.inf:
        raise ConfigurationError(f"{flag} ({variable}) must be a number >= {least:g}, got {text!r}")
    return variable, str(value)


def _operations(args: argparse.Namespace) -> str | None:
    """What is wrong with the metrics and log flags, if anything; the metrics settings go to
    the environment the workers read."""
    if args.log_format not in LOG_FORMATS:
        return f"--log-format must be text or json, got {args.log_format!r}"
    if args.metrics_path and not args.metrics_path.startswith("/"):
        return f"--metrics-path must start with '/' ('' turns it off), got {args.metrics_path!r}"
    require = args.metrics_require_operator or _env_flag("TG_METRICS_REQUIRE_OPERATOR", "false")
    if require and not args.metrics_path:
        return "--metrics-require-operator has no metrics to protect: --metrics-path is ''"
    if require and not os.environ.get("TG_ADMIN_JWT_SECRET"):
        return "--metrics-require-operator needs operator tokens: set TG_ADMIN_JWT_SECRET"
    os.environ["TG_METRICS_PATH"] = args.metrics_path
    os.environ["TG_METRICS_REQUIRE_OPERATOR"] = "true" if require else "false"
    return None


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
    if args.flush_interval <= 0:
        return fail("--flush-interval must be > 0")
    key_cache = (
        _number(args.key_cache_ttl, "--key-cache-ttl", float, 0),
        _number(args.key_cache_long_ttl, "--key-cache-long-ttl", float, 0),
        _number(args.key_cache_size, "--key-cache-size", int, 1),
    )
    catalog = load_plans(args.plans)  # fail fast with a clear message
    allow_signup = not args.no_signup and _env_flag("TG_ALLOW_SIGNUP")
    parse_rate(args.signup_rate, "--signup-rate")
    parse_rate(args.auth_failure_rate, "--auth-failure-rate")
    parse_rate(args.plan_change_rate, "--plan-change-rate")
    offered = _plan_list(args.signup_plans)
    if offered is not None and (not offered or not set(offered) <= set(catalog)):
        return fail(f"--signup-plans must name plans of the catalogue: {', '.join(catalog)}")
    if args.transfer_idle_timeout <= 0:
        return fail("--transfer-idle-timeout must be > 0")
    if args.transfer_min_rate < 0 or args.transfer_max_duration <= 0:
        return fail("--transfer-min-rate must be >= 0 and --transfer-max-duration > 0")
    networks = args.webhook_allowed_networks
    if networks is None:
        networks = _networks(os.environ.get("TG_WEBHOOK_ALLOWED_NETWORKS", ""))
    WebhookPolicy(networks)  # a bad CIDR fails here, with its name
    wrong = _operations(args)
    if wrong:
        return fail(wrong)
    try:
        asyncio.run(preflight(args.database_url, args.redis_url, demo=True))
    except StoreBusy as exc:
        return fail(str(exc))
    except StoreUnavailable as exc:
        flag = "--database-url" if exc.store == "PostgreSQL" else "--redis-url"
        return fail(f"{exc}. Start the server, or fix {flag} (omit it to use memory).")
    # Workers are separate processes: hand them the configuration through the environment.
    for name, value in (
        ("TG_DATABASE_URL", args.database_url),
        ("TG_REDIS_URL", args.redis_url),
        ("TG_PLANS", args.plans),
        ("TG_REDIS_KEY_PREFIX", args.redis_key_prefix),
        ("TG_FLUSH_INTERVAL", str(args.flush_interval)),
        *key_cache,
        ("TG_ALLOW_SIGNUP", "true" if allow_signup else "false"),
        ("TG_SIGNUP_RATE", args.signup_rate),
        ("TG_SIGNUP_PLANS", args.signup_plans),
        ("TG_AUTH_FAILURE_RATE", args.auth_failure_rate),
        ("TG_PLAN_CHANGE_RATE", args.plan_change_rate),
        ("TG_TRANSFER_IDLE_TIMEOUT", str(args.transfer_idle_timeout)),
        ("TG_TRANSFER_MIN_RATE", str(args.transfer_min_rate)),
        ("TG_TRANSFER_MAX_DURATION", str(args.transfer_max_duration)),
        ("TG_WEBHOOK_ALLOWED_NETWORKS", ",".join(networks)),
    ):
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    stores = (
        "PostgreSQL + Redis"
        if args.database_url and args.redis_url
        else ("memory" if not (args.database_url or args.redis_url) else "mixed")
    )
    base = f"http://{args.host}:{args.port}"
    banner = [
        f"tenant-gateway: serving the demo app on {base} (stores: {stores})",
        "register a tenant:\n"
        f"  curl -s -X POST {base}/api/v1/tenants/register -H 'Content-Type: application/json' "
        """-d '{"name": "Acme Corp", "plan": "free", "admin_email": "admin@acme.com"}'""",
    ]
    if args.database_url and not args.redis_url or args.redis_url and not args.database_url:
        banner.append(
            "note: only one of --database-url/--redis-url given; the other store is memory"
        )
    _announce(banner, args.log_format)
    with _metrics_directory(args.workers):
        _serve(args)
    return 0


def _serve(args: argparse.Namespace) -> None:
    uvicorn.run(
        "tenant_gateway.serve:build_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=30,
        # The client address (limits, audit) follows X-Forwarded-For only from these proxies.
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_config=log_config(args.log_format),  # no tk_ key reaches the log
    )
