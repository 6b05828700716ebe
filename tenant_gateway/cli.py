"""``tenant-gateway serve | migrate`` (SPEC §8). The only module that reads the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import uvicorn

from tenant_gateway.accesslog import log_config
from tenant_gateway.admin.schemas import checked_user
from tenant_gateway.client_limits import parse_rate
from tenant_gateway.clock import Period
from tenant_gateway.demo import build_demo_app, create_projects_table
from tenant_gateway.exceptions import (
    ConfigurationError,
    ImportRejected,
    StoreBusy,
    StoreUnavailable,
    TransferBusy,
    redact_url,
)
from tenant_gateway.middleware import TenantGateway
from tenant_gateway.models import AuditEntry, effective_seat_limit
from tenant_gateway.netpolicy import WebhookPolicy
from tenant_gateway.plans import load_plans
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.postgres.transfer_export import export_tenant
from tenant_gateway.postgres.transfer_import import import_tenant, numbered_lines
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.services import Services
from tenant_gateway.settings import Settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenant-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # The stores every command that touches them names the same way (environment as fallback).
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database-url", default=os.environ.get("TG_DATABASE_URL") or None)
    stores = argparse.ArgumentParser(add_help=False, parents=[database])
    stores.add_argument(
        "--redis-url",
        default=os.environ.get("TG_REDIS_URL") or None,
        help="the servers' Redis (none: the embedded counters)",
    )
    stores.add_argument("--redis-key-prefix", default="tg:")
    stores.add_argument("--plans", metavar="FILE", default=None)

    serve = commands.add_parser(
        "serve", parents=[stores], help="run the demo app behind the gateway"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--flush-interval",
        type=float,
        default=1.0,
        help="seconds between usage flushes to the ledger (the loss window on a crash)",
    )
    serve.add_argument(
        "--key-cache-ttl",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long a worker trusts a resolved key before asking the database again"
        " (admin changes also evict it at once through Redis)",
    )
    serve.add_argument(
        "--key-cache-size", type=int, default=100_000, help="resolved keys kept per worker"
    )
    signup = serve.add_argument_group("sign-up and client addresses")
    signup.add_argument(
        "--no-signup",
        action="store_true",
        help="POST /register needs an operator token (env TG_ALLOW_SIGNUP=false)",
    )
    signup.add_argument(
        "--signup-rate",
        default=os.environ.get("TG_SIGNUP_RATE") or "10/minute",
        metavar="RATE",
        help="self-service sign-ups per client address, e.g. 10/minute (the default);"
        " 'unlimited' turns the limit off",
    )
    signup.add_argument(
        "--signup-plans",
        default=os.environ.get("TG_SIGNUP_PLANS") or None,
        metavar="PLAN[,PLAN…]",
        help="the plans self-service sign-up may choose (default: all; operators: any)",
    )
    signup.add_argument(
        "--auth-failure-rate",
        default=os.environ.get("TG_AUTH_FAILURE_RATE") or "30/minute",
        metavar="RATE",
        help="failed key authentications per client address and worker before 429;"
        " 'unlimited' turns the limit off",
    )
    serve.add_argument(
        "--plan-change-rate",
        default=os.environ.get("TG_PLAN_CHANGE_RATE") or "10/hour",
        metavar="RATE",
        help="plan changes per tenant (operators are not limited), e.g. 10/hour (the default);"
        " 'unlimited' turns the limit off",
    )
    signup.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("TG_FORWARDED_ALLOW_IPS") or "",
        metavar="IP[,IP|CIDR…]",
        help="proxies whose X-Forwarded-For gives the client address (default: none)",
    )
    serve.add_argument(
        "--transfer-idle-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long an export waits for its client to read, an import for it to send",
    )
    serve.add_argument(
        "--transfer-min-rate",
        type=int,
        default=1024,
        metavar="BYTES_PER_SECOND",
        help="the slowest pace a transfer's client may keep, averaged over the idle timeout"
        " (default 1024; 0: any)",
    )
    serve.add_argument(
        "--transfer-max-duration",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long an export or import may last at most (default 3600)",
    )
    serve.add_argument(
        "--webhook-allow-network",
        action="append",
        metavar="CIDR",
        dest="webhook_allowed_networks",
        help="a network webhooks may reach though it is not public (e.g. 10.0.0.0/8 for a"
        " self-hosted receiver); repeatable; default TG_WEBHOOK_ALLOWED_NETWORKS (comma-separated)",
    )

    billing = commands.add_parser("billing", help="billing operations")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True)
    close = billing_commands.add_parser(
        "close", parents=[stores], help="issue every tenant's invoice for a month"
    )
    close.add_argument("--period", required=True, metavar="YYYY-MM")

    export = commands.add_parser(
        "export", parents=[database], help="write a tenant's data as NDJSON to stdout"
    )
    export.add_argument("--tenant", required=True)

    load = commands.add_parser(
        "import",
        parents=[stores],
        help="load an export from stdin into a tenant: the app's tables and the users",
    )
    load.add_argument("--tenant", required=True)
    load.add_argument("--dry-run", action="store_true", help="validate and count, write nothing")
    load.add_argument("--app-only", action="store_true", help="skip the gateway's own tables")
    load.add_argument(
        "--with-usage",
        action="store_true",
        help="also add the usage ledger to the tenant's (every value checked; with --redis-url"
        " the imported periods' counters are reset, restored from the ledger on next use;"
        " with the embedded counters, restart the servers)",
    )

    commands.add_parser(
        "migrate", parents=[database], help="apply the database schema (idempotent)"
    )
    return parser


async def _preflight(
    database_url: str | None, redis_url: str | None, *, demo: bool = False
) -> None:
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
        counters = RedisCounters(redis_url)
        try:
            await counters.ping()
        finally:
            await counters.close()


def _fail(message: str) -> int:
    print(f"tenant-gateway: error: {message}", file=sys.stderr)
    return 2


def _env_flag(name: str) -> bool:
    """A true/false environment setting (unset: true)."""
    value = os.environ.get(name, "true").strip().lower()
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
    )


def _serve(args: argparse.Namespace) -> int:
    if args.flush_interval <= 0 or args.key_cache_ttl < 0 or args.key_cache_size < 1:
        return _fail("--flush-interval must be > 0, --key-cache-ttl >= 0 and --key-cache-size >= 1")
    catalog = load_plans(args.plans)  # fail fast with a clear message
    allow_signup = not args.no_signup and _env_flag("TG_ALLOW_SIGNUP")
    parse_rate(args.signup_rate, "--signup-rate")
    parse_rate(args.auth_failure_rate, "--auth-failure-rate")
    parse_rate(args.plan_change_rate, "--plan-change-rate")
    offered = _plan_list(args.signup_plans)
    if offered is not None and (not offered or not set(offered) <= set(catalog)):
        return _fail(f"--signup-plans must name plans of the catalogue: {', '.join(catalog)}")
    if args.transfer_idle_timeout <= 0:
        return _fail("--transfer-idle-timeout must be > 0")
    if args.transfer_min_rate < 0 or args.transfer_max_duration <= 0:
        return _fail("--transfer-min-rate must be >= 0 and --transfer-max-duration > 0")
    networks = args.webhook_allowed_networks
    if networks is None:
        networks = _networks(os.environ.get("TG_WEBHOOK_ALLOWED_NETWORKS", ""))
    WebhookPolicy(networks)  # a bad CIDR fails here, with its name
    try:
        asyncio.run(_preflight(args.database_url, args.redis_url, demo=True))
    except StoreBusy as exc:
        return _fail(str(exc))
    except StoreUnavailable as exc:
        flag = "--database-url" if exc.store == "PostgreSQL" else "--redis-url"
        return _fail(f"{exc}. Start the server, or fix {flag} (omit it to use memory).")
    # Workers are separate processes: hand them the configuration through the environment.
    for name, value in (
        ("TG_DATABASE_URL", args.database_url),
        ("TG_REDIS_URL", args.redis_url),
        ("TG_PLANS", args.plans),
        ("TG_REDIS_KEY_PREFIX", args.redis_key_prefix),
        ("TG_FLUSH_INTERVAL", str(args.flush_interval)),
        ("TG_KEY_CACHE_TTL", str(args.key_cache_ttl)),
        ("TG_KEY_CACHE_SIZE", str(args.key_cache_size)),
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
    print(f"tenant-gateway: serving the demo app on {base} (stores: {stores})", flush=True)
    print(
        "register a tenant:\n"
        f"  curl -s -X POST {base}/api/v1/tenants/register -H 'Content-Type: application/json' "
        """-d '{"name": "Acme Corp", "plan": "free", "admin_email": "admin@acme.com"}'""",
        flush=True,
    )
    if args.database_url and not args.redis_url or args.redis_url and not args.database_url:
        print("note: only one of --database-url/--redis-url given; the other store is memory")
    uvicorn.run(
        "tenant_gateway.cli:build_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=30,
        # The client address (limits, audit) follows X-Forwarded-For only from these proxies.
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_config=log_config(),  # no tk_ key reaches the log
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    if not args.database_url:
        return _fail("migrate needs --database-url (or TG_DATABASE_URL)")
    try:
        asyncio.run(_preflight(args.database_url, None))
    except StoreBusy as exc:
        return _fail(str(exc))
    except StoreUnavailable as exc:
        return _fail(f"{exc}. Is PostgreSQL running and the URL right?")
    print(f"tenant-gateway: schema is up to date in {redact_url(args.database_url)}")
    return 0


async def _close_period(args: argparse.Namespace, period: Period) -> int:
    services = Services.create(
        Settings(
            database_url=args.database_url,
            redis_url=args.redis_url,
            plans=load_plans(args.plans),
            redis_key_prefix=args.redis_key_prefix,
            allow_signup=False,
        )
    )
    await services.directory.start()
    try:
        return await services.billing.close_period(period)
    finally:
        await services.counters.close()
        await services.directory.close()


def _billing(args: argparse.Namespace) -> int:
    if not args.database_url:
        return _fail("billing close needs --database-url (or TG_DATABASE_URL)")
    try:
        period = Period.parse(args.period)
    except ValueError:
        return _fail(f"--period must be YYYY-MM, got {args.period!r}")
    try:
        issued = asyncio.run(_close_period(args, period))
    except ValueError as exc:
        return _fail(str(exc))
    except StoreUnavailable as exc:
        return _fail(f"{exc}. Is the server running and the URL right?")
    print(f"tenant-gateway: {period} closed; {issued} invoice(s) issued now")
    return 0


async def _stdin_chunks() -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(sys.stdin.buffer.read, 1 << 16):
        yield chunk


async def _transfer(args: argparse.Namespace) -> int:
    database = Database(args.database_url)
    directory = PostgresDirectory(database)
    await database.connect()
    try:
        tenant = await directory.get_tenant(args.tenant)
        if tenant is None:
            return _fail(f"no tenant {args.tenant!r} in {redact_url(args.database_url)}")
        if args.command == "export":
            rows = export_tenant(database, tenant.id, datetime.now(UTC))
            async with contextlib.aclosing(rows):  # closed before the pool, even on a broken pipe
                try:
                    async for line in rows:
                        sys.stdout.buffer.write(line)
                    sys.stdout.buffer.flush()
                except BrokenPipeError:
                    return 1
            return 0
        plan = load_plans(args.plans).get(tenant.plan)
        try:
            result = await import_tenant(
                database,
                tenant.id,
                numbered_lines(_stdin_chunks()),
                dry_run=args.dry_run,
                app_only=args.app_only,
                seat_limit=effective_seat_limit(plan, tenant) if plan else None,
                check_user=checked_user,
                with_usage=args.with_usage,
                audit=AuditEntry(
                    tenant_id=tenant.id,
                    actor="cli",
                    action="tenant.import",
                    target=None,
                    at=datetime.now(UTC),
                    ip=None,
                ),
            )
        except ImportRejected as exc:
            return _fail(f"nothing was imported: {exc}")
        if args.redis_url and result.ledger_periods:
            counters = RedisCounters(args.redis_url, key_prefix=args.redis_key_prefix)
            try:
                await counters.forget((tenant.id, period) for period in result.ledger_periods)
            finally:
                await counters.close()
        print(json.dumps(result.summary))
        return 0
    finally:
        await database.close()


def _export_or_import(args: argparse.Namespace) -> int:
    if not args.database_url:
        return _fail(f"{args.command} needs --database-url (or TG_DATABASE_URL)")
    try:
        return asyncio.run(_transfer(args))
    except StoreUnavailable as exc:
        return _fail(f"{exc}. Is PostgreSQL running and the URL right?")
    except TransferBusy as exc:  # a server (or another command) is moving this tenant's data
        return _fail(f"{exc} Try again once it is over.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "billing":
            return _billing(args)
        if args.command in ("export", "import"):
            return _export_or_import(args)
        return _migrate(args)
    except ConfigurationError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
