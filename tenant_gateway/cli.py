"""``tenant-gateway serve | migrate | billing | export | import`` (docs/index.md): the command line.
With ``serve.py``, the only modules that read the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from tenant_gateway import serve
from tenant_gateway.admin.schemas import checked_user
from tenant_gateway.clock import Period
from tenant_gateway.exceptions import (
    ConfigurationError,
    ImportRejected,
    StoreBusy,
    StoreUnavailable,
    TransferBusy,
    redact_url,
)
from tenant_gateway.models import AuditEntry, effective_seat_limit
from tenant_gateway.plans import load_plans
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.postgres.transfer import header_rows
from tenant_gateway.postgres.transfer_export import export_tenant
from tenant_gateway.postgres.transfer_import import MAX_LINE_BYTES, import_tenant, numbered_lines
from tenant_gateway.progress import Progress
from tenant_gateway.redis.connect import open_counters
from tenant_gateway.serve import fail, preflight
from tenant_gateway.services import Services
from tenant_gateway.settings import Settings

__all__ = ["main"]

QUIET_HELP = "no progress line (shown on stderr only when it is a terminal)"


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
    stores.add_argument(
        "--plans",
        metavar="FILE",
        default=None,
        help="the plans file, JSON or TOML (docs/plans.md; env TG_PLANS); default: free,"
        " professional, enterprise",
    )

    serving = commands.add_parser(
        "serve", parents=[stores], help="run the demo app behind the gateway"
    )
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument("--workers", type=int, default=1)
    serving.add_argument(
        "--flush-interval",
        type=float,
        default=1.0,
        help="seconds between usage flushes to the ledger (the loss window on a crash)",
    )
    cache = serving.add_argument_group("key cache (admin changes evict it at once, everywhere)")
    cache.add_argument(
        "--key-cache-ttl",
        default=os.environ.get("TG_KEY_CACHE_TTL") or "1",
        metavar="SECONDS",
        help="how long a worker trusts a resolved key when it cannot confirm that it hears every"
        " change: no Redis beside PostgreSQL, or the subscription down (default 1)",
    )
    cache.add_argument(
        "--key-cache-long-ttl",
        default=os.environ.get("TG_KEY_CACHE_LONG_TTL") or "60",
        metavar="SECONDS",
        help="how long it trusts one while the Redis subscription is confirmed, or when the"
        " directory is in memory (default 60)",
    )
    cache.add_argument(
        "--key-cache-size",
        default=os.environ.get("TG_KEY_CACHE_SIZE") or "100000",
        metavar="KEYS",
        help="resolved keys kept per worker (default 100000)",
    )
    signup = serving.add_argument_group("sign-up and client addresses")
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
    serving.add_argument(
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
    serving.add_argument(
        "--transfer-idle-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long an export waits for its client to read, an import for it to send",
    )
    serving.add_argument(
        "--transfer-min-rate",
        type=int,
        default=1024,
        metavar="BYTES_PER_SECOND",
        help="the slowest pace a transfer's client may keep, averaged over the idle timeout"
        " (default 1024; 0: any)",
    )
    serving.add_argument(
        "--transfer-max-duration",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long an export or import may last at most (default 3600)",
    )
    serving.add_argument(
        "--webhook-allow-network",
        action="append",
        metavar="CIDR",
        dest="webhook_allowed_networks",
        help="a network webhooks may reach though it is not public (e.g. 10.0.0.0/8 for a"
        " self-hosted receiver); repeatable; default TG_WEBHOOK_ALLOWED_NETWORKS (comma-separated)",
    )

    # Metrics and logs (docs/operations.md).
    operations = serving.add_argument_group("metrics and logs")
    operations.add_argument(
        "--metrics-path",
        default=os.environ.get("TG_METRICS_PATH", "/metrics"),
        metavar="PATH",
        help="where Prometheus scrapes the gateway's metrics (default /metrics; '' turns them"
        " off; env TG_METRICS_PATH)",
    )
    operations.add_argument(
        "--metrics-require-operator",
        action="store_true",
        help="the metrics path needs an operator token (env TG_METRICS_REQUIRE_OPERATOR=true)",
    )
    operations.add_argument(
        "--log-format",
        default=os.environ.get("TG_LOG_FORMAT") or "text",
        metavar="FORMAT",
        help="text (the default) or json: one JSON object a line (env TG_LOG_FORMAT)",
    )

    billing = commands.add_parser("billing", help="billing operations")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True)
    close = billing_commands.add_parser(
        "close", parents=[stores], help="issue every tenant's invoice for a month"
    )
    close.add_argument("--period", required=True, metavar="YYYY-MM")
    close.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)

    export = commands.add_parser(
        "export", parents=[database], help="write a tenant's data as NDJSON to stdout"
    )
    export.add_argument("--tenant", required=True)
    export.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)

    load = commands.add_parser(
        "import",
        parents=[stores],
        help="load an export from stdin into a tenant: the app's tables and the users",
    )
    load.add_argument("--tenant", required=True)
    load.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)
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


def _migrate(args: argparse.Namespace) -> int:
    if not args.database_url:
        return fail("migrate needs --database-url (or TG_DATABASE_URL)")
    try:
        asyncio.run(preflight(args.database_url, None))
    except StoreBusy as exc:
        return fail(str(exc))
    except StoreUnavailable as exc:
        return fail(f"{exc}. Is PostgreSQL running and the URL right?")
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
        label = f"billing close {period}"
        with Progress.on_terminal(label, quiet=args.quiet, unit="tenants") as progress:
            return await services.billing.close_period(period, lambda: progress.add(1))
    finally:
        await services.counters.close()
        await services.directory.close()


def _billing(args: argparse.Namespace) -> int:
    if not args.database_url:
        return fail("billing close needs --database-url (or TG_DATABASE_URL)")
    try:
        period = Period.parse(args.period)
    except ValueError:
        return fail(f"--period must be YYYY-MM, got {args.period!r}")
    try:
        issued = asyncio.run(_close_period(args, period))
    except ValueError as exc:
        return fail(str(exc))
    except StoreUnavailable as exc:
        return fail(f"{exc}. Is the server running and the URL right?")
    print(f"tenant-gateway: {period} closed; {issued} invoice(s) issued now")
    return 0


async def _stdin_chunks(progress: Progress) -> AsyncIterator[bytes]:
    """Standard input, counted: rows (lines after the header, whose row counts are the
    total) and bytes."""
    head: bytes | None = b""  # the header line until it is whole, then None
    while chunk := await asyncio.to_thread(sys.stdin.buffer.read, 1 << 16):
        rows = chunk.count(b"\n")
        if head is not None and rows:
            head += chunk[: chunk.index(b"\n")]
            progress.total, head, rows = header_rows(head), None, rows - 1
        elif head is not None and len(head) < MAX_LINE_BYTES:
            head += chunk
        progress.add(rows, len(chunk))
        yield chunk


def _export_chunk(progress: Progress, chunk: bytes) -> None:
    """Count a chunk of the export: the header alone first, whole lines after it."""
    if progress.size == 0:
        progress.total = header_rows(chunk)
        progress.add(0, len(chunk))
    else:
        progress.add(chunk.count(b"\n"), len(chunk))


async def _transfer(args: argparse.Namespace) -> int:
    database = Database(args.database_url)
    directory = PostgresDirectory(database)
    await database.connect()
    try:
        tenant = await directory.get_tenant(args.tenant)
        if tenant is None:
            return fail(f"no tenant {args.tenant!r} in {redact_url(args.database_url)}")
        label = f"{args.command} {tenant.id}"
        progress = Progress.on_terminal(label, quiet=args.quiet)
        if args.command == "export":
            rows = export_tenant(database, tenant.id, datetime.now(UTC))
            async with contextlib.aclosing(rows):  # closed before the pool, even on a broken pipe
                try:
                    with progress:
                        async for chunk in rows:
                            sys.stdout.buffer.write(chunk)
                            _export_chunk(progress, chunk)
                        sys.stdout.buffer.flush()
                except BrokenPipeError:
                    return 1
            return 0
        plan = load_plans(args.plans).get(tenant.plan)
        try:
            with progress:
                result = await import_tenant(
                    database,
                    tenant.id,
                    numbered_lines(_stdin_chunks(progress)),
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
            return fail(f"nothing was imported: {exc}")
        if args.redis_url and result.ledger_periods:
            counters = open_counters(args.redis_url, key_prefix=args.redis_key_prefix)
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
        return fail(f"{args.command} needs --database-url (or TG_DATABASE_URL)")
    try:
        return asyncio.run(_transfer(args))
    except StoreUnavailable as exc:
        return fail(f"{exc}. Is PostgreSQL running and the URL right?")
    except TransferBusy as exc:  # a server (or another command) is moving this tenant's data
        return fail(f"{exc} Try again once it is over.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve.run(args)
        if args.command == "billing":
            return _billing(args)
        if args.command in ("export", "import"):
            return _export_or_import(args)
        return _migrate(args)
    except ConfigurationError as exc:
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
