"""Calls that each run a PostgreSQL transaction, straight to PostgreSQL and through PgBouncer in
transaction pooling mode.

Not run in CI. ``.venv/bin/python -m benchmarks.pgbouncer [--seconds 10] [--connections 32]
[--rounds 3] [--workers 2] [--pool-size 4]``

For each database URL — PostgreSQL directly (asyncpg's statement cache on, the default),
PostgreSQL directly with ``?statement_cache_size=0``, and PgBouncer (``pool_mode =
transaction``, ``--pool-size`` server connections) with ``?statement_cache_size=0`` — it starts
``tenant-gateway serve --workers N`` on a throw-away database (``tg_pgb_*``) and a private Redis
prefix (db 11), registers 20 tenants, and loads ``GET /api/v1/projects`` (the demo app: one
tenant transaction under row-level security per call) round-robin over them from
``--connections`` keep-alive connections for ``--seconds``; ``--rounds`` times, the three
interleaved. It prints each round's req/s, the median round's p50 and p99, the CPU time per
request (median of the rounds) of the gateway's processes, of the database's PostgreSQL
backends and of PgBouncer, the answers that were not 200, the most server connections the
database had during a load (``pg_stat_activity``, sampled), and checks the tenants'
``api_calls`` against the 200s. CPU time leaves out what other work on the machine takes; req/s
and latencies do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from benchmarks.bouncer import POOL_SIZE, PgBouncer, find_pgbouncer
from benchmarks.common import (
    PG_ADMIN_URL,
    cpu_seconds,
    create_database,
    delete_redis_keys,
    drop_database,
    read_usage,
    register,
    text_table,
)
from benchmarks.launch import Server
from benchmarks.load import Load, Request

REDIS_URL = "redis://127.0.0.1:6379/11"
TENANTS = 20
PLANS = {  # a monthly quota (so every call is decided, and counted at once), never reached
    "plans": {
        "metered": {
            "max_users": None,
            "monthly_calls": 10**9,
            "burst_per_second": None,
            "price_cents": 0,
        }
    }
}


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    not_200: int
    server_connections: int
    cpu_us: tuple[float, float, float]
    """CPU time per answered request, in µs: the gateway's processes, PostgreSQL's backends for
    the database, PgBouncer."""
    usage: int
    """The tenants' ``api_calls`` together: the 200s exactly, or something is lost."""
    oks: int


@dataclass(slots=True)
class _Backends:
    most: int = 0
    """The most backends connected to the database at once."""
    seen: set[int] = field(default_factory=set)
    """Every backend's pid seen connected."""


async def _watch(database: str, until: asyncio.Event, backends: _Backends) -> None:
    """The database's backends while the load runs (every 50 ms)."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        while not until.is_set():
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
            backends.most = max(backends.most, len(rows))
            backends.seen.update(row["pid"] for row in rows)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def _cpu(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds so far of each process of ``pids`` still running."""
    spent = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            spent[pid] = sum(cpu_seconds(pid))
    return spent


def _group(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (a server and its workers)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


async def _load(base: str, keys: list[str], seconds: float, connections: int) -> Load:
    requests = [
        Request("GET", "/api/v1/projects", {"Authorization": f"Bearer {key}"}) for key in keys
    ]
    load = Load(base, lambda n: requests[n % len(requests)], connections=connections)
    load.start()
    await load.until(1, seconds=seconds)
    await load.stop()
    return load


async def _backend_pids(database: str) -> set[int]:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await conn.close()
    return {row["pid"] for row in rows}


def measure(
    name: str, url: str, database: str, bouncer_pid: int | None, args: argparse.Namespace
) -> Outcome:
    prefix = f"tg-pgb-bench:{uuid.uuid4().hex[:8]}:"
    serve_args = ("--database-url", url, "--redis-url", REDIS_URL, "--redis-key-prefix", prefix)
    extra = ("--workers", str(args.workers), "--signup-rate", "unlimited", "--plans", args.plans)
    try:
        with Server(*serve_args, *extra) as server:
            tenants = [
                register(server.base, f"T{i}", "metered", f"a@t{i}.io") for i in range(TENANTS)
            ]
            backends = _Backends(seen=asyncio.run(_backend_pids(database)))
            gateway = _group(server.pid)
            bouncer = [bouncer_pid] if bouncer_pid else []
            before = [_cpu(gateway), _cpu(backends.seen), _cpu(bouncer)]

            async def run() -> Load:
                done = asyncio.Event()
                watcher = asyncio.create_task(_watch(database, done, backends))
                try:
                    return await _load(
                        server.base, [key for _, key in tenants], args.seconds, args.connections
                    )
                finally:
                    done.set()
                    await watcher

            started = time.monotonic()
            load = asyncio.run(run())
            elapsed = time.monotonic() - started
            after = [_cpu(gateway), _cpu(backends.seen), _cpu(bouncer)]
            summary = load.summary()
            oks = summary.statuses[200]
            calls = sum(read_usage(server.base, tid, key)["api_calls"] for tid, key in tenants)
        per_request = [
            sum(spent - was.get(pid, 0.0) for pid, spent in now.items()) / summary.responses * 1e6
            for was, now in zip(before, after, strict=True)
        ]
        return Outcome(
            name,
            summary.responses / elapsed,
            summary.percentile_ms(0.5),
            summary.percentile_ms(0.99),
            summary.responses - oks + sum(summary.errors.values()),
            backends.most,
            (per_request[0], per_request[1], per_request[2]),
            calls,
            oks,
        )
    finally:
        delete_redis_keys(REDIS_URL, prefix + "*")


VARIANTS = (  # name, through PgBouncer, query
    ("PostgreSQL", False, ""),
    ("PostgreSQL, statement_cache_size=0", False, "?statement_cache_size=0"),
    ("PgBouncer, statement_cache_size=0", True, "?statement_cache_size=0"),
)


def _row(name: str, runs: list[Outcome]) -> list[str]:
    """The median round of ``runs`` by req/s; usage must be exact in every round."""
    middle = sorted(runs, key=lambda o: o.requests_per_second)[len(runs) // 2]
    wrong = [f"{o.usage} for {o.oks} 200s" for o in runs if o.usage != o.oks]
    return [
        name,
        " ".join(f"{o.requests_per_second:,.0f}" for o in runs),
        f"{middle.p50_ms:.1f}",
        f"{middle.p99_ms:.1f}",
        *(f"{statistics.median(o.cpu_us[i] for o in runs):.0f}" for i in range(3)),
        str(sum(o.not_200 for o in runs)),
        str(max(o.server_connections for o in runs)),
        "; ".join(wrong) or "exact",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pgbouncer", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE)
    args = parser.parse_args()
    binary = find_pgbouncer()
    if binary is None:
        raise SystemExit("no pgbouncer binary: apt-get install pgbouncer (scripts/test does)")
    runs: dict[str, list[Outcome]] = {name: [] for name, _, _ in VARIANTS}
    bouncer = PgBouncer(binary, PG_ADMIN_URL, pool_size=args.pool_size)
    with tempfile.TemporaryDirectory() as scratch, bouncer:
        args.plans = str(Path(scratch) / "plans.json")
        Path(args.plans).write_text(json.dumps(PLANS))
        for _ in range(args.rounds):  # interleaved: a change in the machine's load hits all
            for name, through_bouncer, query in VARIANTS:
                database = f"tg_pgb_{uuid.uuid4().hex[:8]}"
                direct = create_database(database)
                url = bouncer.url(direct, query[1:]) if through_bouncer else direct + query
                try:
                    bouncer_pid = bouncer.process.pid if through_bouncer else None
                    runs[name].append(measure(name, url, database, bouncer_pid, args))
                finally:
                    drop_database(database)
    print(
        f"\n{args.workers} workers x a pool of 10, {args.connections} connections,"
        f" {args.seconds:g} s a round; PgBouncer: {args.pool_size} server connections;"
        " p50 and p99 of the median round\n"
    )
    headers = ["database URL", "req/s, each round", "p50 ms", "p99 ms"]
    headers += ["gateway µs", "PostgreSQL µs", "PgBouncer µs", "not 200"]
    headers += ["server conns", "usage"]
    print(text_table(headers, [_row(name, outcomes) for name, outcomes in runs.items()]))


if __name__ == "__main__":
    main()
