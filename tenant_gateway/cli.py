"""``tenant-gateway serve | migrate | billing close | export | import | token``: the command
line. With ``serve.py``, the only modules that read the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime

from tenant_gateway import serve
from tenant_gateway.admin.auth import mint_operator_token
from tenant_gateway.admin.schemas import checked_user
from tenant_gateway.clock import Period
from tenant_gateway.exceptions import (
    ConfigurationError,
    ImportRejected,
    StoreUnavailable,
    TransferBusy,
    redact_url,
)
from tenant_gateway.models import AuditEntry, effective_seat_limit
from tenant_gateway.option import parse_duration
from tenant_gateway.options import add_flags, values
from tenant_gateway.plans import load_plans
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.postgres.transfer import header_rows
from tenant_gateway.postgres.transfer_export import export_tenant
from tenant_gateway.postgres.transfer_import import MAX_LINE_BYTES, import_tenant, numbered_lines
from tenant_gateway.progress import Progress
from tenant_gateway.redis.connect import open_counters
from tenant_gateway.serve import fail, preflight, unreachable
from tenant_gateway.services import Services
from tenant_gateway.settings import Settings

__all__ = ["main"]

_DESCRIPTION = (
    "Run the demo app behind the gateway, apply its schema, close a month's invoices, move a"
    " tenant's data, or mint an operator token. Each setting's flag defaults to its TG_*"
    " variable (docs/configuration.md)."
)
QUIET_HELP = "no progress line (shown on stderr only when it is a terminal)"


def _parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line. Each setting's flag (``options``) defaults to its ``TG_*`` variable in
    ``environ`` (the process's environment; none for the configuration reference)."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="tenant-gateway", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    serving = commands.add_parser("serve", help="run the demo app behind the gateway")
    add_flags(serving, "serve", env)

    billing = commands.add_parser("billing", help="billing operations")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True)
    close = billing_commands.add_parser("close", help="issue every tenant's invoice for a month")
    add_flags(close, "billing close", env)
    close.add_argument("--period", required=True, metavar="YYYY-MM", help="the month to close")
    close.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)

    export = commands.add_parser("export", help="write a tenant's data as NDJSON to stdout")
    add_flags(export, "export", env)
    export.add_argument("--tenant", required=True, help="the id of the tenant to export")
    export.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)

    load = commands.add_parser(
        "import", help="load an export from stdin into a tenant: the app's tables and the users"
    )
    add_flags(load, "import", env)
    load.add_argument(
        "--tenant", required=True, help="the id of the tenant to load into (registered already)"
    )
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

    migrate = commands.add_parser("migrate", help="apply the database schema (idempotent)")
    add_flags(migrate, "migrate", env)

    token = commands.add_parser(
        "token", help="print an operator token for the admin API, signed with the secret"
    )
    add_flags(token, "token", env)
    token.add_argument(
        "--sub", required=True, metavar="NAME", help="who the token is for (the audit log's actor)"
    )
    token.add_argument(
        "--ttl",
        default="1h",
        metavar="DURATION",
        help="how long the token is valid: 30m, 1h (the default), 7d, or seconds",
    )
    return parser


def _migrate(args: argparse.Namespace) -> int:
    if not args.database_url:
        return fail("migrate needs --database-url (or TG_DATABASE_URL)")
    try:
        asyncio.run(preflight(args.database_url, None))
    except StoreUnavailable as exc:
        return fail(unreachable(exc))
    print(f"tenant-gateway: schema is up to date in {redact_url(args.database_url)}")
    return 0


async def _close_period(args: argparse.Namespace, period: Period) -> int:
    await preflight(None, args.redis_url)  # read only for tenants with usage: checked first
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
        return fail(unreachable(exc))
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
    if args.command == "import":  # what the import needs after writing, checked before it
        plans = load_plans(args.plans)
        await preflight(None, args.redis_url)
    await database.connect()
    try:
        tenant = await directory.get_tenant(args.tenant)
        if tenant is None:
            return fail(_no_tenant(args))
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
        plan = plans.get(tenant.plan)
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


def _no_tenant(args: argparse.Namespace) -> str:
    where = redact_url(args.database_url)
    if args.command == "export":
        return (
            f"no tenant {args.tenant!r} in {where}: check --tenant and --database-url (an"
            " operator lists the tenants: GET /api/v1/tenants/)"
        )
    return (
        f"no tenant {args.tenant!r} in {where}: an import loads into a registered tenant;"
        " register it there first (POST /api/v1/tenants/register) and pass the id it answers"
        " as --tenant"
    )


def _token(args: argparse.Namespace) -> int:
    """An operator token, minted as the admin API verifies them."""
    secret, most = args.admin_jwt_secret, args.admin_jwt_max_lifetime
    if secret is None:
        return fail(
            "tenant-gateway token needs the gateway's operator secret: set TG_ADMIN_JWT_SECRET"
            " or --admin-jwt-secret"
        )
    subject = args.sub.strip()
    if not subject:
        return fail("--sub must name who the token is for, such as --sub alice")
    try:
        lifetime = parse_duration(args.ttl)
    except ValueError as exc:
        return fail(f"--ttl {exc}")
    if most is not None and lifetime > most:
        return fail(
            f"--ttl {args.ttl} is longer than operator tokens may live ({most:g} s): shorten it,"
            " or raise --admin-jwt-max-lifetime (TG_ADMIN_JWT_MAX_LIFETIME) here and on the"
            " gateway"
        )
    print(mint_operator_token(secret, subject, lifetime, now=time.time()))
    return 0


def _export_or_import(args: argparse.Namespace) -> int:
    if not args.database_url:
        return fail(f"{args.command} needs --database-url (or TG_DATABASE_URL)")
    try:
        return asyncio.run(_transfer(args))
    except StoreUnavailable as exc:
        return fail(unreachable(exc))
    except TransferBusy as exc:  # a server (or another command) is moving this tenant's data
        return fail(f"{exc} Try again once it is over.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":  # it hands its flags' text on to its workers
            return serve.run(args)
        command = f"billing {args.billing_command}" if args.command == "billing" else args.command
        vars(args).update(values(args, command))  # each setting's flag, checked and read
        if args.command == "billing":
            return _billing(args)
        if args.command in ("export", "import"):
            return _export_or_import(args)
        if args.command == "token":
            return _token(args)
        return _migrate(args)
    except ConfigurationError as exc:
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
