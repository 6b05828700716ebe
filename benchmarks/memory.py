"""Memory of the gateway's key cache: RSS per cached tenant, and the ``key_cache_size`` bound.

Each measurement runs in a fresh child process (RSS never shrinks, so configurations must not
share one). The child builds a ``TenantGateway`` on the embedded memory stores around the bare
ping app, registers N tenants straight through ``gateway.services.directory.register`` (records
built as the admin API's ``POST /register`` builds them, ``new_tenant``), reads VmRSS, resolves
every tenant's key once through ``gateway.services.resolver.resolve`` so that each is cached (up
to ``key_cache_size``), draining the resolver's last-use batch every 5,000 keys as the server's
flush loop does every second, and reads VmRSS again.
"bytes per cached tenant" = RSS growth / cache length.

Two kinds of record are measured:

    shared  the embedded directory hands the resolver the very objects it stores, so a cache
            entry costs only the entry (key string, tuple, expiry, ``Principal``);
    fresh   every lookup returns new copies of the tenant and key records (new strings, bytes
            and datetimes), as asyncpg decoding a row does: what an entry costs in front of
            PostgreSQL, where the records live in the cache and nowhere else in the process.

Each key is resolved through a new string object, as a server decodes each request's header,
so the cache owns the strings it keeps. Usage: ``.venv/bin/python -m benchmarks.memory``
(``--tenants 100000 --sizes 100000,10000 --records shared,fresh``; about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import common
from benchmarks.apps import BENCH_PLANS, bare_app
from benchmarks.launch import REPO
from tenant_gateway import TenantGateway
from tenant_gateway.keys import mint_key, new_id
from tenant_gateway.models import ApiKeyRecord, Role, Tenant, TenantStatus, User

RECORD_KINDS = ("shared", "fresh")
CHILD_TIMEOUT = 300.0
DRAIN_EVERY = 5_000  # keys resolved between two drains of the last-use batch (≈ 1 s of traffic)


def rss_bytes() -> int:
    """``VmRSS`` of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("no VmRSS in /proc/self/status")


def fresh_str(text: str) -> str:
    """An equal string that is a new object (``str(text)`` or slicing would return ``text``)."""
    return text.encode().decode()


_Record = TypeVar("_Record", Tenant, ApiKeyRecord)


def fresh_copy(record: _Record) -> _Record:
    """A copy of a record whose strings, bytes and datetimes are new objects, like a decoded row."""
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        if isinstance(value, str) and type(value) is str:  # not the StrEnum status or role
            changes[item.name] = fresh_str(value)
        elif isinstance(value, bytes):
            changes[item.name] = bytes(bytearray(value))
        elif isinstance(value, datetime):
            changes[item.name] = datetime.fromtimestamp(value.timestamp(), value.tzinfo)
    return dataclasses.replace(record, **changes)


def use_fresh_records(gateway: TenantGateway) -> None:
    """Make the directory's ``find_key`` return fresh copies, as the PostgreSQL directory does."""
    directory = gateway.services.directory
    stored_find_key = directory.find_key

    async def find_key(key_hash: bytes) -> tuple[ApiKeyRecord, Tenant] | None:
        found = await stored_find_key(key_hash)
        return None if found is None else (fresh_copy(found[0]), fresh_copy(found[1]))

    setattr(directory, "find_key", find_key)  # noqa: B010 (assigning to a method: mypy refuses)


def new_tenant(name: str, admin_email: str) -> tuple[Tenant, User, ApiKeyRecord, str]:
    """A tenant on the "bench" plan, its admin, its first key's record and that key's secret,
    built as ``TenantHandlers.register`` (``tenant_gateway/admin/tenants.py``) builds them,
    with the same ``keys.mint_key``, so the directory's ``register`` stores exactly what it
    would."""
    now = datetime.now(UTC)
    tenant = Tenant(
        id=new_id("tenant"),
        name=name,
        plan="bench",
        status=TenantStatus.ACTIVE,
        max_users=None,
        admin_email=admin_email,
        created_at=now,
    )
    admin = User(new_id("usr"), tenant.id, admin_email, Role.ADMIN, now)
    secret, key = mint_key(tenant.id, "registration", Role.ADMIN, now, None)
    return tenant, admin, key, secret


async def fill(gateway: TenantGateway, tenants: int) -> list[str]:
    keys = []
    for number in range(tenants):
        tenant, admin, key, secret = new_tenant(f"Tenant {number}", f"admin{number}@example.com")
        await gateway.services.directory.register(tenant, admin, key)
        keys.append(secret)
    return keys


async def resolve_all(gateway: TenantGateway, keys: Sequence[str]) -> None:
    resolver = gateway.services.resolver
    for number, key in enumerate(keys, 1):
        principal = await resolver.resolve(fresh_str(key))
        if principal.tenant.plan != "bench":
            raise RuntimeError("resolved the wrong tenant")
        if number % DRAIN_EVERY == 0:
            resolver.drain_last_used()  # as the server's flush loop does every second
    resolver.drain_last_used()


def measure(tenants: int, cache_size: int, records: str) -> dict[str, Any]:
    """One configuration, in this process (the child)."""
    gc.collect()
    started = rss_bytes()
    gateway = TenantGateway(bare_app(), plans=BENCH_PLANS, key_cache_size=cache_size)
    if records == "fresh":
        use_fresh_records(gateway)
    clock = time.perf_counter()
    keys = asyncio.run(fill(gateway, tenants))
    register_seconds = time.perf_counter() - clock
    gc.collect()
    before = rss_bytes()
    clock = time.perf_counter()
    asyncio.run(resolve_all(gateway, keys))
    resolve_seconds = time.perf_counter() - clock
    gc.collect()
    after = rss_bytes()
    cached = len(gateway.services.resolver)
    return {
        "tenants": tenants,
        "cache_size": cache_size,
        "records": records,
        "rss_start": started,
        "rss_before": before,
        "rss_after": after,
        "cached": cached,
        "bytes_per_cached": (after - before) / cached if cached else float("nan"),
        "register_us": register_seconds / tenants * 1e6,
        "resolve_us": resolve_seconds / tenants * 1e6,
    }


def run_child(tenants: int, cache_size: int, records: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.memory", "--child",
        "--tenants", str(tenants), "--sizes", str(cache_size), "--records", records,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, check=False, capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


HEADERS = ("records", "key_cache_size", "tenants", "cache length", "RSS start MiB",
           "RSS registered MiB", "RSS cached MiB", "cache growth MiB", "bytes / cached tenant",
           "resolve µs/key")  # fmt: skip


def cells(result: dict[str, Any]) -> tuple[str, ...]:
    return (
        result["records"],
        f"{result['cache_size']:,}",
        f"{result['tenants']:,}",
        f"{result['cached']:,}",
        mib(result["rss_start"]),
        mib(result["rss_before"]),
        mib(result["rss_after"]),
        mib(result["rss_after"] - result["rss_before"]),
        f"{result['bytes_per_cached']:,.0f}",
        f"{result['resolve_us']:.1f}",
    )


def text_table(results: list[dict[str, Any]]) -> str:
    return common.text_table(HEADERS, [cells(result) for result in results])


def markdown_table(results: list[dict[str, Any]]) -> str:
    return common.markdown_table(HEADERS, [cells(result) for result in results])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tenants", type=int, default=100_000, help="tenants to register")
    parser.add_argument(
        "--sizes", default="100000,10000", help="comma-separated key_cache_size values"
    )
    parser.add_argument(
        "--records", default=",".join(RECORD_KINDS), help="comma-separated: shared, fresh"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    except ValueError:
        parser.error("--sizes takes integers")
    args.records = [kind.strip() for kind in args.records.split(",") if kind.strip()]
    if not set(args.records) <= set(RECORD_KINDS) or not args.records:
        parser.error(f"--records takes {', '.join(RECORD_KINDS)}")
    if args.tenants < 1 or not args.sizes or min(args.sizes) < 1:
        parser.error("--tenants and --sizes must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.tenants, args.sizes[0], args.records[0])))
        return 0
    results = []
    for records in args.records:
        for size in args.sizes:
            print(f"measuring: {records} records, key_cache_size={size:,} ...", flush=True)
            results.append(run_child(args.tenants, size, records))
    print()
    title = (
        f"{args.tenants:,} tenants registered, each key resolved once"
        " (embedded memory stores; one fresh process per row)"
    )
    print(title)
    print(text_table(results))
    print()
    print(markdown_table(results))
    bound_held = all(r["cached"] == min(r["cache_size"], r["tenants"]) for r in results)
    print()
    print(f"cache length == min(key_cache_size, tenants) in every row: {bound_held}")
    return 0 if bound_held else 1


if __name__ == "__main__":
    sys.exit(main())
