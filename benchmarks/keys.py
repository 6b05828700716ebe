"""Many keys, few queries: 2,000 keys called in turn against one key, under the same load, on
PostgreSQL + Redis.

Not run in CI. ``.venv/bin/python -m benchmarks.keys [--keys 2000] [--duration 75] [--rounds 3]``

One tenant (a plan with limits no run reaches, and a monthly quota, so every call takes the
exact decision in Redis) gets ``--keys`` API keys through the admin API. Then, for each variant,
a fresh gateway process (``benchmarks.apps:gateway_app``: the bare ping app, which queries no
database itself, behind the gateway; one uvicorn worker, pinned to core 0, the load generator to
core 1) serves ``benchmarks.load`` with ``--connections`` connections as fast as answers come:
*one* sends every call with the same key; *many* sends call *i* with key *i* mod ``--keys``, so
each key comes back only after all the others. Rounds interleave the variants (medians shown).

The cache starts cold. The warm-up calls every key once (each a directory query; its seconds
are shown), then ``--duration`` seconds are measured alone: requests, req/s, p50 and p99
latency and the server's CPU time per request. The default 75 s holds what the steady state
costs beyond the warm-up: each key is trusted 60 s (``key_cache_long_ttl``, while the Redis
subscription confirms it hears every change) and then reloaded once, in the background, and
its ``last_used_at`` written at most once a minute, in one statement per flush.

PostgreSQL transactions per request are those of the server's whole life (warm-up, start-up and
final flush included) over every request it answered: ``xact_commit + xact_rollback`` of the
run's database in ``pg_stat_database``, read from another database before the server starts and
after it has stopped and every connection has gone (asyncpg's reset of a connection going back
to its pool counts as one too); ``tg_api_keys`` row updates are the ``last_used_at`` writes.
The goal: fewer than 0.05 transactions a request and at least 0.9 of one key's throughput. The
machine's other load moves req/s by tens of percent between runs: keep it otherwise idle (its
load average and CPU steal are printed) and use several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from benchmarks.common import (
    ADMIN,
    PG_ADMIN_URL,
    cpu_seconds,
    http_json,
    markdown_table,
    register,
    scratch_stores,
    text_table,
    verdict,
)
from benchmarks.launch import Server
from benchmarks.load import Load, Request
from benchmarks.run import machine_ticks

REDIS_URL = "redis://127.0.0.1:6379/11"
PING_PATH = "/api/v1/ping"
SERVER_CORE, LOAD_CORE = "0", 1
GOAL_XACTS, GOAL_RATIO = 0.05, 0.9
KEY_UPDATES = "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'tg_api_keys'"


@dataclass(frozen=True, slots=True)
class Run:
    variant: str
    requests: int
    """Answered in the measured window (after the warm-up)."""
    all_requests: int
    """Answered in the server's whole life, warm-up included (what its transactions served)."""
    failed: int
    seconds: float
    warm_up: float
    """Seconds until every key had been called once (each of those a cold load)."""
    p50_ms: float
    p99_ms: float
    transactions: int
    key_updates: int
    cpu_us: float
    steal: float
    load_average: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def per_request(self) -> float:
        return self.transactions / max(1, self.all_requests)


async def _fetch_row(url: str, sql: str, *args: object) -> asyncpg.Record:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        row = await conn.fetchrow(sql, *args)
    finally:
        await conn.close()
    if row is None:
        raise RuntimeError(f"no row for {sql!r}")
    return row


def transactions(database: str) -> int:
    """Transactions the database has run so far (read from another database: not counted)."""
    row = asyncio.run(
        _fetch_row(
            PG_ADMIN_URL,
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            database,
        )
    )
    return int(row[0])


def settled_transactions(database: str) -> int:
    """The count once no session is left on the database and the statistics have stopped
    moving (a backend reports its last ones as it exits)."""
    deadline = time.monotonic() + 60
    last = -1
    while time.monotonic() < deadline:
        sessions = asyncio.run(
            _fetch_row(
                PG_ADMIN_URL, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
            )
        )[0]
        count = transactions(database)
        if sessions == 0 and count == last:
            return count
        last = count
        time.sleep(1.0)
    raise RuntimeError(f"the statistics of {database} did not settle within 60 s")


def key_updates(database_url: str) -> int:
    """Row updates of tg_api_keys so far (its last-use writes)."""
    return int(asyncio.run(_fetch_row(database_url, KEY_UPDATES))[0] or 0)


def create_keys(base: str, tenant: str, admin_key: str, count: int) -> list[str]:
    keys = [admin_key]
    while len(keys) < count:
        created = http_json(
            "POST", f"{base}{ADMIN}/{tenant}/keys", {"role": "developer"}, admin_key
        )
        keys.append(str(created["api_key"]))
    return keys


def gateway(database_url: str, prefix: str, log: Path, wrapper: Sequence[str] = ()) -> Server:
    """The benchmark's gateway process (``wrapper``: valgrind, for ``keys_instructions``)."""
    pin = ("taskset", "-c", SERVER_CORE) if (os.cpu_count() or 1) > 1 else ()
    return Server(
        "--workers", "1", "--log-level", "warning", "--no-access-log",
        command=(sys.executable, "-m", "uvicorn", "benchmarks.apps:gateway_app", "--factory"),
        prefix=(*pin, *wrapper),
        env={
            "TG_BENCH_DATABASE_URL": database_url,
            "TG_BENCH_REDIS_URL": REDIS_URL,
            "TG_BENCH_REDIS_PREFIX": prefix,
        },
        log=log,
        ready_timeout=300 if wrapper else 60,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Window:
    """The load after its warm-up: the answers from ``mark`` on, and the server's CPU then."""

    load: Load
    mark: tuple[int, int]
    warm_up: float
    seconds: float
    cpu_seconds: float
    steal: float


def _cpu(pid: int) -> float:
    user, kernel = cpu_seconds(pid)
    return user + kernel


async def _load(pid: int, base: str, keys: Sequence[str], args: argparse.Namespace) -> Window:
    """Every key called once (the warm-up: each a cold load), then ``--duration`` seconds of
    the steady state, measured alone."""
    calls = [Request("GET", PING_PATH, {"Authorization": f"Bearer {key}"}) for key in keys]
    turn = itertools.count()
    load = Load(base, lambda _: calls[next(turn) % len(calls)], connections=args.connections)
    load.start()
    await load.until(len(calls))
    mark, started, cpu_before = load.mark(), time.monotonic(), _cpu(pid)
    ticks_before, steal_before = machine_ticks()
    await asyncio.sleep(args.duration)
    cpu_after, (ticks, steal) = _cpu(pid), machine_ticks()
    seconds = time.monotonic() - started
    await load.stop()
    return Window(
        load,
        mark,
        started - load.started_at,
        seconds,
        cpu_after - cpu_before,
        (steal - steal_before) / max(1, ticks - ticks_before),
    )


def measure(
    variant: str, keys: Sequence[str], database_url: str, prefix: str, args: argparse.Namespace
) -> Run:
    database = database_url.rsplit("/", 1)[-1]
    updates_before = key_updates(database_url)
    before = settled_transactions(database)
    load_average = Path("/proc/loadavg").read_text().split()[0]
    with gateway(database_url, prefix, args.log) as server:
        window = asyncio.run(_load(server.pid, server.base, keys, args))
    after = settled_transactions(database)
    updates_after = key_updates(database_url)
    load, steady = (
        window.load,
        window.load.summary(
            window.mark, end=window.load.started_at + window.warm_up + window.seconds
        ),
    )
    answered = steady.responses
    ok = steady.statuses[200]
    return Run(
        variant=variant,
        requests=answered,
        all_requests=len(load.statuses),
        failed=answered - ok + sum(steady.errors.values()),
        seconds=window.seconds,
        warm_up=window.warm_up,
        p50_ms=steady.percentile_ms(0.50),
        p99_ms=steady.percentile_ms(0.99),
        transactions=after - before,
        key_updates=updates_after - updates_before,
        cpu_us=window.cpu_seconds / max(1, answered) * 1e6,
        steal=window.steal,
        load_average=load_average,
    )


def row(run: Run) -> list[str]:
    return [
        run.variant,
        f"{run.requests:,}",
        f"{run.rate:,.0f}",
        f"{run.p50_ms:.2f}",
        f"{run.p99_ms:.2f}",
        f"{run.transactions:,}",
        f"{run.per_request:.4f}",
        f"{run.key_updates:,}",
        f"{run.cpu_us:.0f}",
        f"{run.warm_up:.2f}",
    ]


HEADERS = (
    "keys", "requests", "req/s", "p50 ms", "p99 ms", "PG xacts", "xacts/request",
    "key row updates", "server CPU µs/req", "warm-up s",
)  # fmt: skip


def median_run(runs: Sequence[Run]) -> Run:
    """Each figure's median over the rounds (requests and seconds kept as the median run's)."""
    middle = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]
    return Run(
        variant=runs[0].variant,
        requests=middle.requests,
        all_requests=middle.all_requests,
        failed=sum(r.failed for r in runs),
        seconds=middle.seconds,
        warm_up=statistics.median(r.warm_up for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        transactions=middle.transactions,
        key_updates=middle.key_updates,
        cpu_us=statistics.median(r.cpu_us for r in runs),
        steal=max(r.steal for r in runs),
        load_average=",".join(r.load_average for r in runs),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument(
        "--duration", type=float, default=75.0, help="seconds measured a run, after the warm-up"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians)")
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    print(f"machine load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    runs: dict[str, list[Run]] = {"one": [], "many": []}
    with scratch_stores("keys", REDIS_URL) as (database_url, prefix, tmp):
        args.log = tmp / "server.log"
        with gateway(database_url, prefix, args.log) as server:
            tenant, admin_key = register(server.base, "Keys", "bench_quota", "k@keys.io")
            keys = create_keys(server.base, tenant, admin_key, args.keys)
        print(f"tenant {tenant}: {len(keys):,} keys", flush=True)
        for round_number in range(1, args.rounds + 1):
            for variant, chosen in (("one", keys[:1]), ("many", keys)):
                run = measure(f"{variant} ({len(chosen):,})", chosen, database_url, prefix, args)
                runs[variant].append(run)
                print(
                    f"round {round_number} {run.variant}: {run.rate:,.0f} req/s,"
                    f" {run.per_request:.4f} xacts/request, {run.failed} failed,"
                    f" load average {run.load_average}, steal {run.steal:.1%}",
                    flush=True,
                )
    one, many = median_run(runs["one"]), median_run(runs["many"])
    ratio = [
        "many / one", "", f"{many.rate / one.rate:.2f}", f"{many.p50_ms / one.p50_ms:.2f}",
        f"{many.p99_ms / one.p99_ms:.2f}", "", "", "", f"{many.cpu_us / one.cpu_us:.2f}", "",
    ]  # fmt: skip
    rows = [row(one), row(many), ratio]
    title = (
        f"{args.keys:,} keys in turn vs one key: uvicorn 1 worker, {args.connections} connections,"
        f" {args.duration:g} s x {args.rounds} round(s), PostgreSQL + Redis"
    )
    print(f"\n{title}\n{text_table(HEADERS, rows, rule=True)}\n\n{markdown_table(HEADERS, rows)}")
    if args.rounds > 1:
        pairs = [m.rate / o.rate for o, m in zip(runs["one"], runs["many"], strict=True)]
        print(
            "many / one req/s round by round: "
            + ", ".join(f"{ratio:.2f}" for ratio in pairs)
            + f" (median {statistics.median(pairs):.2f})"
        )
    print(f"machine load average after: {Path('/proc/loadavg').read_text().strip()}")
    failures = [f"{r.variant}: {r.failed} calls not 200" for r in (one, many) if r.failed]
    if many.per_request >= GOAL_XACTS:
        failures.append(f"{many.per_request:.4f} PostgreSQL transactions a request")
    if many.rate < GOAL_RATIO * one.rate:
        failures.append(f"throughput {many.rate / one.rate:.2f} of one key's")
    return verdict(
        failures,
        f"{many.per_request:.4f} transactions a request (< {GOAL_XACTS}),"
        f" {many.rate / one.rate:.2f} of one key's throughput (>= {GOAL_RATIO})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
