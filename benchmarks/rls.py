"""What row-level security costs per query: the gateway's tenant transaction against WHERE.

Creates a throw-away ``tg_rls_bench_*`` database, applies the gateway's migrations, creates the
demo ``projects`` table (under RLS through ``isolate_table``) and ``projects_plain`` (the same
columns, defaults and primary key — ``LIKE projects INCLUDING ALL`` — without RLS), loads both
with the same rows (``--rows`` spread evenly over ``--tenants``, interleaved in insertion order
the way tenants create projects over time; ``--layout clustered`` keeps each tenant's rows
together instead), ``VACUUM ANALYZE``s them, then lists one random tenant's projects again and
again, one query at a time on one pooled connection:

    RLS    ``Database.tenant_transaction(tenant)`` + ``SELECT … FROM projects ORDER BY id``
           (the gateway path: runtime role and tenant context set, the policy filters)
    WHERE  a plain pooled transaction as the superuser +
           ``SELECT … FROM projects_plain WHERE tenant_id = $1 ORDER BY id``

Each sample is timed twice: the whole path (acquire, BEGIN, [set_config,] fetch, COMMIT,
release) and the fetch alone ("query only"), so the gateway's extra set_config round trip shows
separately from the cost of the policy itself. The variants are interleaved query by query: each
tenant of a round's random sequence is listed by both, back to back, the first alternating, so
both see the same cache state (two 1M-row tables do not fit the default 128 MB shared_buffers).
The database is dropped at the end.

Usage: ``.venv/bin/python -m benchmarks.rls [--rows 1000000] [--tenants 1000] [--queries 2000]
[--rounds 3] [--layout interleaved|clustered]``. Needs PostgreSQL (trust auth, superuser
``postgres``) at 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from benchmarks.common import create_database, drop_database, markdown_table, text_table
from tenant_gateway.demo import create_projects_table
from tenant_gateway.postgres.database import RUNTIME_ROLE, TENANT_SETTING, Database

GOAL = 1.10  # the target: RLS may cost at most 10 % more per query

RLS_SQL = "SELECT id, name, created_at FROM projects ORDER BY id"
WHERE_SQL = "SELECT id, name, created_at FROM projects_plain WHERE tenant_id = $1 ORDER BY id"
PLAIN_DDL = "CREATE TABLE projects_plain (LIKE projects INCLUDING ALL)"
# Same rows in both tables. "interleaved": row i belongs to tenant i % tenants, so consecutive
# rows belong to different tenants (as when many tenants create projects over time) and one
# tenant's rows sit on ~as many heap pages as it has rows. "clustered": each tenant's rows are
# contiguous (a few pages per tenant), which makes the query cheap and RLS's share larger.
# Ids look like new_id().
TENANT_OF_ROW = {"interleaved": "i % $2", "clustered": "(i::bigint * $2) / $1"}
LOAD_SQL = """
INSERT INTO {table} (tenant_id, id, name, created_at)
SELECT 'tenant_' || substr(md5('t' || ({tenant})), 1, 20),
       'prj_' || substr(md5('p' || i), 1, 20),
       'Project ' || i,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second'
FROM generate_series(0, $1 - 1) AS i
"""

RLS_FULL = "RLS: tenant_transaction + fetch"
WHERE_FULL = "WHERE: plain transaction + fetch"
RLS_QUERY = "RLS: fetch only"
WHERE_QUERY = "WHERE: fetch only"
VARIANTS = (RLS_FULL, WHERE_FULL, RLS_QUERY, WHERE_QUERY)
PAIRS = ((RLS_FULL, WHERE_FULL), (RLS_QUERY, WHERE_QUERY))


@dataclass(slots=True)
class Samples:
    """Seconds per sample, per variant, per round."""

    rounds: list[dict[str, list[float]]] = field(default_factory=list)
    setup: dict[str, list[float]] = field(default_factory=lambda: {"RLS": [], "WHERE": []})

    def new_round(self) -> dict[str, list[float]]:
        self.rounds.append({name: [] for name in VARIANTS})
        return self.rounds[-1]

    def all(self, name: str) -> list[float]:
        return [value for one in self.rounds for value in one[name]]


@dataclass(frozen=True, slots=True)
class Stats:
    median_ms: float
    p95_ms: float
    per_second: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        return cls(
            median_ms=statistics.median(seconds) * 1000,
            p95_ms=statistics.quantiles(seconds, n=100)[94] * 1000,
            per_second=len(seconds) / sum(seconds),
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per table")
    parser.add_argument("--tenants", type=int, default=1_000, help="tenants sharing the rows")
    parser.add_argument("--queries", type=int, default=2_000, help="queries per variant/round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the tenant sequence")
    parser.add_argument(
        "--layout",
        choices=sorted(TENANT_OF_ROW),
        default="interleaved",
        help="physical order of the rows: tenants interleaved (default) or each one contiguous",
    )
    args = parser.parse_args(argv)
    if args.tenants < 1 or args.rows < args.tenants or args.queries < 20 or args.rounds < 1:
        parser.error("need tenants ≥ 1, rows ≥ tenants, queries ≥ 20, rounds ≥ 1")
    return args


async def load(url: str, table: str, rows: int, tenants: int, layout: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        sql = LOAD_SQL.format(table=table, tenant=TENANT_OF_ROW[layout])
        await conn.execute(sql, rows, tenants)
        await conn.execute(f"VACUUM ANALYZE {table}")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def prepare(url: str, rows: int, tenants: int, layout: str) -> dict[str, int]:
    """Migrations, both tables, the data; returns each tenant's row count."""
    database = Database(url)
    await database.connect()  # applies the gateway's migrations
    await database.close()
    await create_projects_table(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(PLAIN_DDL)
        security = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relname IN ('projects', 'projects_plain') ORDER BY relname"
        )
        for row in security:
            print(
                f"  {row['relname']}: row security {row['relrowsecurity']},"
                f" forced {row['relforcerowsecurity']}"
            )
        for row in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename IN ('projects', 'projects_plain')"
            " ORDER BY tablename"
        ):
            print(f"  {row['indexdef']}")
        if [(r["relrowsecurity"], r["relforcerowsecurity"]) for r in security] != [
            (True, True),
            (False, False),
        ]:
            raise RuntimeError("projects must be under (forced) RLS and projects_plain not")
    finally:
        await conn.close()

    print(f"loading {rows:,} rows over {tenants:,} tenants ({layout}) into both tables …")
    seconds = await asyncio.gather(
        load(url, "projects", rows, tenants, layout),
        load(url, "projects_plain", rows, tenants, layout),
    )
    print(f"  loaded + VACUUM ANALYZE in {max(seconds):.1f} s (two connections in parallel)")

    conn = await asyncpg.connect(url)
    try:
        for table in ("projects", "projects_plain"):
            sizes = await conn.fetchrow(
                "SELECT pg_size_pretty(pg_relation_size($1::regclass)) AS heap,"
                " pg_size_pretty(pg_indexes_size($1::regclass)) AS indexes",
                table,
            )
            assert sizes is not None
            print(f"  {table}: heap {sizes['heap']}, indexes {sizes['indexes']}")
        counts = {
            row["tenant_id"]: row["n"]
            for row in await conn.fetch(
                "SELECT tenant_id, count(*)::int AS n FROM projects GROUP BY tenant_id"
            )
        }
        plain = {
            row["tenant_id"]: row["n"]
            for row in await conn.fetch(
                "SELECT tenant_id, count(*)::int AS n FROM projects_plain GROUP BY tenant_id"
            )
        }
    finally:
        await conn.close()
    if counts != plain or len(counts) != tenants:
        raise RuntimeError("the two tables do not hold the same tenants and row counts")
    return counts


async def explain(database: Database, tenant: str) -> tuple[str, str]:
    """Both plans for one tenant; each EXPLAIN ANALYZE runs 3 times and the last is kept,
    so the timings shown are not those of a first execution."""
    rls: list[asyncpg.Record] = []
    where: list[asyncpg.Record] = []
    for _ in range(3):
        async with database.tenant_transaction(tenant) as conn:
            who = await conn.fetchrow(
                "SELECT current_user AS role, current_setting($1, true) AS tenant", TENANT_SETTING
            )
            assert who is not None
            if (who["role"], who["tenant"]) != (RUNTIME_ROLE, tenant):
                raise RuntimeError(f"tenant transaction runs as {who['role']} for {who['tenant']}")
            rls = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {RLS_SQL}")
        async with database.connection() as conn, conn.transaction():
            where = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {WHERE_SQL}", tenant)
    return "\n".join(r[0] for r in rls), "\n".join(r[0] for r in where)


async def one_rls(database: Database, tenant: str, expected: int) -> tuple[float, float, float]:
    """(whole path, fetch only, set-up before the fetch) in seconds."""
    perf = time.perf_counter
    t0 = perf()
    async with database.tenant_transaction(tenant) as conn:
        t1 = perf()
        rows = await conn.fetch(RLS_SQL)
        t2 = perf()
    t3 = perf()
    if len(rows) != expected:
        raise RuntimeError(f"RLS returned {len(rows)} rows for {tenant}, not {expected}")
    return t3 - t0, t2 - t1, t1 - t0


async def one_where(database: Database, tenant: str, expected: int) -> tuple[float, float, float]:
    """(whole path, fetch only, set-up before the fetch) in seconds."""
    perf = time.perf_counter
    t0 = perf()
    async with database.connection() as conn, conn.transaction():
        t1 = perf()
        rows = await conn.fetch(WHERE_SQL, tenant)
        t2 = perf()
    t3 = perf()
    if len(rows) != expected:
        raise RuntimeError(f"WHERE returned {len(rows)} rows for {tenant}, not {expected}")
    return t3 - t0, t2 - t1, t1 - t0


async def run_pairs(
    database: Database, tenants: Sequence[str], counts: dict[str, int], samples: Samples | None
) -> None:
    """Each tenant once per variant, back to back; which variant goes first alternates."""
    out = samples.new_round() if samples is not None else None
    for number, tenant in enumerate(tenants):
        if number % 2 == 0:
            rls = await one_rls(database, tenant, counts[tenant])
            where = await one_where(database, tenant, counts[tenant])
        else:
            where = await one_where(database, tenant, counts[tenant])
            rls = await one_rls(database, tenant, counts[tenant])
        if samples is not None and out is not None:
            out[RLS_FULL].append(rls[0])
            out[RLS_QUERY].append(rls[1])
            samples.setup["RLS"].append(rls[2])
            out[WHERE_FULL].append(where[0])
            out[WHERE_QUERY].append(where[1])
            samples.setup["WHERE"].append(where[2])


async def measure(
    url: str, counts: dict[str, int], queries: int, rounds: int, seed: int
) -> tuple[Samples, tuple[str, str]]:
    # One connection, shared by both variants: same backend, same caches, no pool effects.
    database = Database(url, min_size=1, max_size=1, timeout=60.0)
    await database.connect()
    try:
        names = sorted(counts)
        rng = random.Random(seed)
        warm = rng.sample(names, len(names))
        print(f"warm-up: every tenant once per variant ({len(warm):,} queries each) …", flush=True)
        await run_pairs(database, warm, counts, None)
        plans = await explain(database, rng.choice(names))

        samples = Samples()
        for number in range(rounds):
            gc.collect()
            await run_pairs(database, [rng.choice(names) for _ in range(queries)], counts, samples)
            out = samples.rounds[-1]
            ratios = ", ".join(
                f"{a.split(':')[1].strip()} {ratio(out[a], out[b]):.3f}" for a, b in PAIRS
            )
            print(f"  round {number + 1}/{rounds}: median RLS/WHERE — {ratios}", flush=True)
        return samples, plans
    finally:
        await database.close()


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    return statistics.median(numerator) / statistics.median(denominator)


def tables(samples: Samples) -> tuple[str, str]:
    stats = {name: Stats.of(samples.all(name)) for name in VARIANTS}
    header = ["variant", "median ms", "p95 ms", "queries/s", "RLS/WHERE median", "RLS/WHERE p95"]
    rows: list[list[str]] = []
    for rls, where in PAIRS:
        for name in (rls, where):
            s = stats[name]
            if name == rls:
                vs = (
                    f"{s.median_ms / stats[where].median_ms:.3f}",
                    f"{s.p95_ms / stats[where].p95_ms:.3f}",
                )
            else:
                vs = ("1.000", "1.000")
            rows.append(
                [name, f"{s.median_ms:.3f}", f"{s.p95_ms:.3f}", f"{s.per_second:,.0f}", *vs]
            )
    return text_table(header, rows, rule=True), markdown_table(header, rows)


def report(samples: Samples, plans: tuple[str, str]) -> None:
    rls_plan, where_plan = plans
    print(f"\nEXPLAIN (ANALYZE, BUFFERS) — RLS, as {RUNTIME_ROLE}, tenant context set (3rd run):")
    print("  " + rls_plan.replace("\n", "\n  "))
    print("\nEXPLAIN (ANALYZE, BUFFERS) — WHERE, as the superuser on projects_plain (3rd run):")
    print("  " + where_plan.replace("\n", "\n  "))
    for label, plan, index in (
        ("RLS", rls_plan, "projects_pkey"),
        ("WHERE", where_plan, "projects_plain_pkey"),
    ):
        lines = [text.strip() for text in plan.splitlines()]
        scan = next((text for text in lines if f" on {index}" in text), None)
        node = scan.removeprefix("->").split(" on ")[0].strip() if scan else "NOT USED"
        conds = [text for text in lines if text.startswith("Index Cond:")]
        sort = "yes" if any(text.startswith("Sort Key:") for text in lines) else "no"
        print(
            f"  {label}: {index}: {node}; {conds[0] if conds else 'no index condition'};"
            f" separate sort {sort}"
        )

    plain, markdown = tables(samples)
    print("\n" + plain + "\n\n" + markdown + "\n")
    setup_rls = statistics.median(samples.setup["RLS"]) * 1000
    setup_where = statistics.median(samples.setup["WHERE"]) * 1000
    print(
        f"transaction set-up before the fetch (acquire + BEGIN [+ set_config]), median:"
        f" RLS {setup_rls:.3f} ms, WHERE {setup_where:.3f} ms"
        f" (+{setup_rls - setup_where:.3f} ms for the set_config round trip)"
    )
    for rls, where in PAIRS:
        per_round = [ratio(one[rls], one[where]) for one in samples.rounds]
        overall = ratio(samples.all(rls), samples.all(where))
        verdict = "MET" if overall <= GOAL else "NOT MET"
        print(
            f"goal RLS ≤ {GOAL:.2f} × WHERE ({rls.split(':')[1].strip()}): median ratio"
            f" {overall:.3f} (rounds {min(per_round):.3f}–{max(per_round):.3f}) → {verdict}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"tg_rls_bench_{secrets.token_hex(4)}"
    url = create_database(name)
    try:
        counts = asyncio.run(prepare(url, args.rows, args.tenants, args.layout))
        print(
            f"measuring {args.rounds} round(s) × {args.queries:,} queries per variant"
            f" (tenants with {min(counts.values()):,}–{max(counts.values()):,} rows) …",
            flush=True,
        )
        samples, plans = asyncio.run(measure(url, counts, args.queries, args.rounds, args.seed))
        report(samples, plans)
    finally:
        drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
