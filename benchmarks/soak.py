"""Soak test: ``tenant-gateway serve --workers 2`` on PostgreSQL + Redis under steady mixed load.

Not run in CI. ``.venv/bin/python -m benchmarks.soak [--duration 600] [--connections 200]``

It creates a throw-away database (``tg_soak_*``) and a private Redis key prefix
(``soak:<token>:`` in db 11), writes a plans file with three plans (``metered``: a finite
monthly quota, no burst limit; ``unlimited``; ``bursty``: no quota, a burst limit), starts the
CLI server with two workers on a free loopback port, registers ``--tenants`` tenants over those
plans, then runs the load for ``--duration`` seconds: ``--connections`` keep-alive HTTP/1.1
connections, each request for a random tenant, GET / POST / DELETE ``/api/v1/projects`` (the
projects a tenant holds stay bounded, so a GET's cost does not grow with time).

The load generator is ``load.Load``'s minimal HTTP/1.1 client on asyncio streams in this
process (uvloop when importable), not wrk (which cannot count per tenant) and not httpx (several
times the CPU per request): every response is attributed to its tenant, so usage can be checked
exactly. Its own CPU use is reported (about 0.2 of a core at 2,000 req/s). ``--pin`` puts the
servers on the first core(s) and this process on the last; by default the kernel schedules
everything (on 2 cores pinning halves the throughput: the servers then get one core while the
load needs 0.2).

Every 10 s it prints throughput, responses by status, the servers' RSS (the ``serve`` process
and all its descendants, from /proc) and CPU. At the end: total req/s, failures (any 5xx, any
connection error or timeout, any status other than 2xx/429), RSS growth between the first and
the last minute, and usage exactness, twice: (1) ``--settle`` seconds after the load, every
tenant's ``api_calls`` must equal the 2xx responses its requests got and ``rejected_calls`` its
429s; (2) after SIGTERM, deleting the run's Redis keys (a Redis data loss) and a restart, the
same numbers rebuilt from the PostgreSQL ledger. Then it stops the server, drops the database
and deletes the Redis keys. Exit status 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    cpu_seconds,
    delete_redis_keys,
    read_usage,
    register,
    scratch_stores,
    verdict,
)
from benchmarks.launch import Server, log_problems
from benchmarks.load import Load, Request

REDIS_URL = "redis://127.0.0.1:6379/11"
PROJECTS = "/api/v1/projects"
PLAN_NAMES = ("metered", "unlimited", "bursty")
SAMPLE_SECONDS = 10.0
MAX_PROJECTS_PER_TENANT = 20
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# -- environment ----------------------------------------------------------------------------


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's when it is installed (the ``bench`` extra): the load costs less CPU."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def plans_document(quota: int, burst: int) -> dict[str, Any]:
    return {
        "plans": {
            "metered": {
                "max_users": 50,
                "monthly_calls": quota,
                "burst_per_second": None,
                "price_cents": 1900,
            },
            "unlimited": {
                "max_users": None,
                "monthly_calls": None,
                "burst_per_second": None,
                "price_cents": 49900,
            },
            "bursty": {
                "max_users": 50,
                "monthly_calls": None,
                "burst_per_second": burst,
                "price_cents": 4900,
            },
        }
    }


# -- the server -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pinning:
    server_cpus: str | None
    load_cpus: set[int] | None

    def describe(self) -> str:
        if self.server_cpus is None:
            return "not pinned"
        load = ",".join(str(cpu) for cpu in sorted(self.load_cpus or ()))
        return f"servers on CPU {self.server_cpus}, load generator on CPU {load}"

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs the server on its CPUs."""
        return () if self.server_cpus is None else ("taskset", "-c", self.server_cpus)


def choose_pinning(enabled: bool) -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
        return Pinning(None, None)
    return Pinning(",".join(str(cpu) for cpu in cpus[:-1]), {cpus[-1]})


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    tree = [root]
    for pid in tree:  # the list grows as it is walked: breadth first
        tree.extend(children.get(pid, ()))
    return tree


@dataclass(frozen=True, slots=True)
class TreeUsage:
    processes: int
    rss_bytes: int
    cpu_seconds: float


def tree_usage(root: int) -> TreeUsage:
    """Resident memory (sum of RSS) and CPU time (user + system) of a process tree."""
    processes = rss = 0
    cpu = 0.0
    for pid in process_tree(root):
        try:
            cpu += sum(cpu_seconds(pid))
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        processes += 1
    return TreeUsage(processes, rss, cpu)


# -- tenants and their calls ----------------------------------------------------------------


@dataclass(slots=True)
class Tenant:
    id: str
    key: str
    plan: str
    ok: int = 0
    """2xx responses."""
    rejected: int = 0
    """429 responses."""
    lost: int = 0
    """Requests sent whose response never came (connection error, timeout): uncountable."""
    statuses: Counter[int] = field(default_factory=Counter)
    projects: list[str] = field(default_factory=list)
    """Projects this run created and has not deleted yet."""


def register_tenants(base: str, count: int, token: str) -> list[Tenant]:
    tenants = []
    for index in range(count):
        plan = PLAN_NAMES[index % len(PLAN_NAMES)]
        tenant_id, key = register(base, f"Soak {index}", plan, f"soak{index}@{token}.test")
        tenants.append(Tenant(tenant_id, key, plan))
    return tenants


class Mix:
    """Each request for a random tenant: GET, POST or DELETE of its projects (the projects a
    tenant holds stay bounded); each answer counted for that tenant."""

    def __init__(self, tenants: list[Tenant], seed: int, mix: tuple[float, float]) -> None:
        self.tenants = tenants
        self.rng = random.Random(seed)
        self.post_share, self.delete_share = mix

    def __call__(self, connection: int) -> Request:
        tenant = self.rng.choice(self.tenants)
        headers = {"Authorization": f"Bearer {tenant.key}"}
        method, path, body = "GET", PROJECTS, b""
        draw = self.rng.random()
        if draw < self.post_share and len(tenant.projects) < MAX_PROJECTS_PER_TENANT:
            method, body = "POST", json.dumps({"name": f"p{self.rng.randrange(10**9)}"}).encode()
            headers["Content-Type"] = "application/json"
        elif draw < self.post_share + self.delete_share and tenant.projects:
            project = tenant.projects.pop(self.rng.randrange(len(tenant.projects)))
            method, path = "DELETE", f"{PROJECTS}/{project}"
        done = functools.partial(self._record, tenant, method, path)
        return Request(method, path, headers, body, done)

    @staticmethod
    def _record(tenant: Tenant, method: str, path: str, status: int | None, body: bytes) -> None:
        if status is None:
            tenant.lost += 1
            return
        tenant.statuses[status] += 1
        if 200 <= status < 300:
            tenant.ok += 1
            if method == "POST":
                tenant.projects.append(str(json.loads(body)["id"]))
        elif status == 429:
            tenant.rejected += 1
        if method == "DELETE" and status == 429:  # refused before the app: still there
            tenant.projects.append(path.rsplit("/", 1)[1])


# -- sampling and the report ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    """Seconds since the load started."""
    responses: int
    statuses: dict[int, int]
    errors: int
    rss_bytes: int
    processes: int
    server_cpu: float
    """Server CPU use over the interval, in cores."""
    load_cpu: float
    """This process's CPU use over the interval, in cores."""
    p50_ms: float
    p99_ms: float


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


async def sample_until(load: Load, server: Server, duration: float, samples: list[Sample]) -> float:
    """Sample every 10 s until ``duration`` has passed; stop the load; answer the seconds run."""
    start = previous_at = time.monotonic()
    mark = load.mark()
    previous_server = tree_usage(server.pid).cpu_seconds
    previous_load = time.process_time()
    while True:
        now = time.monotonic()
        remaining = duration - (now - start)
        if remaining <= 0:
            break
        await asyncio.sleep(min(SAMPLE_SECONDS - ((now - start) % SAMPLE_SECONDS), remaining))
        now = time.monotonic()
        usage = tree_usage(server.pid)
        process_cpu = time.process_time()
        since, mark = mark, load.mark()
        answers = load.summary(since)
        elapsed = now - previous_at
        sample = Sample(
            at=now - start,
            responses=answers.responses,
            statuses=dict(sorted(answers.statuses.items())),
            errors=answers.errors.total(),
            rss_bytes=usage.rss_bytes,
            processes=usage.processes,
            server_cpu=(usage.cpu_seconds - previous_server) / elapsed,
            load_cpu=(process_cpu - previous_load) / elapsed,
            p50_ms=answers.percentile_ms(0.50),
            p99_ms=answers.percentile_ms(0.99),
        )
        samples.append(sample)
        print(
            f"[{sample.at:6.1f} s] {sample.responses / elapsed:6.0f} req/s"
            f"  p50 {sample.p50_ms:.1f} ms  p99 {sample.p99_ms:.1f} ms"
            f"  statuses {sample.statuses}  errors {sample.errors}"
            f"  server RSS {mib(sample.rss_bytes)} ({sample.processes} processes)"
            f"  server CPU {sample.server_cpu:.2f}  load CPU {sample.load_cpu:.2f}",
            flush=True,
        )
        previous_at, previous_server, previous_load = now, usage.cpu_seconds, process_cpu
    await load.stop()  # every connection finishes its request in flight
    return time.monotonic() - start


@dataclass(slots=True)
class UsageCheck:
    label: str
    mismatches: list[str] = field(default_factory=list)
    checked: int = 0
    api_calls: int = 0
    ok: int = 0

    @property
    def passed(self) -> bool:
        return not self.mismatches and self.checked > 0

    def describe(self) -> str:
        verdict = "EXACT" if self.passed else f"MISMATCH ({len(self.mismatches)} tenants)"
        return (
            f"usage {self.label}: {verdict}: {self.checked} tenants, api_calls {self.api_calls:,}"
            f" vs 2xx {self.ok:,}"
        )


def check_usage(base: str, tenants: list[Tenant], label: str, quota: int) -> UsageCheck:
    check = UsageCheck(label)
    for tenant in tenants:
        usage = read_usage(base, tenant.id, tenant.key)
        api_calls, rejected = int(usage["api_calls"]), int(usage["rejected_calls"])
        check.checked += 1
        check.api_calls += api_calls
        check.ok += tenant.ok
        problems = []
        if tenant.lost:  # a lost request may or may not have been admitted
            if not tenant.ok <= api_calls <= tenant.ok + tenant.lost:
                problems.append(f"api_calls {api_calls} outside 2xx {tenant.ok} + {tenant.lost}")
        elif api_calls != tenant.ok:
            problems.append(f"api_calls {api_calls} != 2xx {tenant.ok}")
        if not tenant.lost and rejected != tenant.rejected:
            problems.append(f"rejected_calls {rejected} != 429s {tenant.rejected}")
        if tenant.plan == "metered" and api_calls > quota:
            problems.append(f"api_calls {api_calls} over the quota {quota}")
        if problems:
            check.mismatches.append(f"{tenant.id} ({tenant.plan}): " + "; ".join(problems))
    return check


def rss_growth(samples: list[Sample]) -> tuple[float, float] | None:
    """Mean RSS of the samples in the first minute and in the last minute of the load."""
    if not samples:
        return None
    end = samples[-1].at
    first = [s.rss_bytes for s in samples if s.at <= 60.0 + 1e-6]
    last = [s.rss_bytes for s in samples if s.at >= end - 60.0 - 1e-6]
    return statistics.fmean(first), statistics.fmean(last)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=30, help="spread over the three plans")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--quota",
        type=int,
        default=None,
        help="monthly_calls of the metered plan (default: 25 per second of --duration)",
    )
    parser.add_argument("--burst", type=int, default=20, help="burst_per_second of bursty")
    parser.add_argument("--post", type=float, default=0.15, help="share of POSTs")
    parser.add_argument("--delete", type=float, default=0.15, help="share of DELETEs")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before reading usage")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=20.0,
        help="percent of last- over first-minute RSS that fails the run (only for runs of"
        " 120 s or more, whose two minutes do not overlap)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on the first core(s), this process on the last (default: not pinned)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="copy the server log to $TMPDIR/tg-soak-*.log"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.tenants < len(PLAN_NAMES):
        parser.error("--duration must be positive, --connections ≥ 1, --tenants ≥ 3")
    if not (0 <= args.post and 0 <= args.delete and args.post + args.delete <= 1):
        parser.error("--post and --delete are shares that add up to at most 1")
    if args.quota is None:
        args.quota = max(100, int(25 * args.duration))
    return args


def report(
    load: Load, tenants: list[Tenant], samples: list[Sample], elapsed: float, load_cpu: float
) -> list[str]:
    """Print the load's totals: throughput, latency, statuses, errors; what failed."""
    totals = load.summary()
    print(
        f"throughput: {totals.responses:,} responses, {totals.responses / elapsed:,.0f}"
        f" req/s; load generator CPU {load_cpu:.1f} s ({load_cpu / elapsed:.2f} cores)"
    )
    if samples:
        first_minute = [s for s in samples if s.at <= 60.0 + 1e-6]
        last_minute = [s for s in samples if s.at >= samples[-1].at - 60.0 - 1e-6]
        print(
            "latency: p50 (median of the 10 s samples)"
            f" {statistics.median(s.p50_ms for s in samples):.1f} ms; p99 first minute"
            f" {max(s.p99_ms for s in first_minute):.1f} ms, last minute"
            f" {max(s.p99_ms for s in last_minute):.1f} ms"
        )
    print(f"responses by status: {dict(sorted(totals.statuses.items()))}")
    for plan in PLAN_NAMES:
        merged: Counter[int] = Counter()
        for tenant in tenants:
            if tenant.plan == plan:
                merged.update(tenant.statuses)
        print(f"  {plan:9}: {dict(sorted(merged.items()))}")
    print(f"connection errors/timeouts: {dict(totals.errors) or 0}")
    failures = []
    server_errors = sum(n for s, n in totals.statuses.items() if s >= 500)
    if server_errors:
        failures.append(f"{server_errors} responses with a 5xx status")
    unexpected = {s: n for s, n in totals.statuses.items() if not (200 <= s < 300 or s == 429)}
    if unexpected:
        failures.append(f"unexpected statuses {unexpected}")
    if totals.errors:
        failures.append(f"connection errors {dict(totals.errors)}")
    return failures


def memory_failures(samples: list[Sample], elapsed: float, max_growth: float) -> list[str]:
    """Print the server's RSS growth from the first minute to the last; what failed."""
    growth = rss_growth(samples)
    if growth is None:
        return []
    first, last = growth
    percent = (last - first) / first * 100
    overlap = " (the two minutes overlap: run ≥ 120 s to judge)" if elapsed < 120 else ""
    print(
        f"server RSS: first minute {mib(first)}, last minute {mib(last)}"
        f" ({percent:+.1f} %){overlap}; peak {mib(max(s.rss_bytes for s in samples))}"
    )
    if elapsed >= 120 and percent > max_growth:
        return [f"RSS grew {percent:.1f} % (> {max_growth} %)"]
    return []


def drive(args: argparse.Namespace, server: Server, tenants: list[Tenant]) -> list[str]:
    """The load for ``--duration``, sampled; its summary; what failed."""
    load = Load(server.base, Mix(tenants, args.seed, (args.post, args.delete)), args.connections)
    samples: list[Sample] = []
    cpu_before = time.process_time()

    async def sampled() -> float:
        load.start()
        return await sample_until(load, server, args.duration, samples)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        elapsed = runner.run(sampled())
    load_cpu = time.process_time() - cpu_before
    print(flush=True)
    print(f"== summary ({args.duration:g} s requested, {elapsed:.1f} s run) ==")
    failures = report(load, tenants, samples, elapsed, load_cpu)
    return failures + memory_failures(samples, elapsed, args.max_rss_growth)


def run(args: argparse.Namespace) -> int:
    token = secrets.token_hex(4)
    pinning = choose_pinning(args.pin)
    failures: list[str] = []
    with scratch_stores("soak", REDIS_URL) as (database_url, prefix, tmp):
        plans = tmp / "plans.json"
        plans.write_text(json.dumps(plans_document(args.quota, args.burst)))
        log = tmp / "serve.log"
        serve_args = [
            "--workers", str(args.workers), "--database-url", database_url,
            "--redis-url", REDIS_URL, "--redis-key-prefix", prefix, "--plans", str(plans),
        ]  # fmt: skip
        servers = [Server(*serve_args, prefix=pinning.prefix, log=log)]
        try:
            server = servers[0]
            server.wait_ready()
            print(
                f"serving on {server.base}: {args.workers} workers, {pinning.describe()};"
                f" plans metered (quota {args.quota:,}), unlimited, bursty"
                f" ({args.burst}/s per worker)",
                flush=True,
            )
            tenants = register_tenants(server.base, args.tenants, token)
            if pinning.load_cpus is not None:
                os.sched_setaffinity(0, pinning.load_cpus)
            print(
                f"{len(tenants)} tenants; load: {args.connections} connections for"
                f" {args.duration:g} s, GET {1 - args.post - args.delete:.0%} / POST"
                f" {args.post:.0%} / DELETE {args.delete:.0%} of {PROJECTS}; load loop"
                f" {'uvloop' if loop_factory() else 'asyncio'}",
                flush=True,
            )
            failures += drive(args, server, tenants)

            time.sleep(args.settle)
            live = check_usage(server.base, tenants, f"after {args.settle:g} s", args.quota)
            print(live.describe())
            server.stop(timeout=45)
            code = server.process.returncode
            if code != 0:
                failures.append(f"server exited with {code} on SIGTERM")
            deleted = delete_redis_keys(REDIS_URL, prefix + "*")
            print(f"SIGTERM: server exited {code}; deleted {deleted} Redis keys (a Redis loss)")
            servers.append(server := Server(*serve_args, prefix=pinning.prefix, log=log))
            server.wait_ready()
            ledger = check_usage(server.base, tenants, "from the ledger after restart", args.quota)
            print(ledger.describe())
            for check in (live, ledger):
                for line in check.mismatches[:10]:
                    print(f"    {line}")
                if not check.passed:
                    failures.append(f"usage {check.label} not exact")
        finally:
            servers[-1].stop(timeout=45)
            if servers[-1].process.returncode != 0:
                code = servers[-1].process.returncode
                failures.append(f"server exited with {code} at the end")
            text = log.read_text(errors="replace")
            problems = log_problems(text)
            if problems:
                failures.append(f"{len(problems)} tracebacks or 5xx in the server log")
                print("server log, first problems:\n" + "\n".join(problems[:20]))
                print("server log, last lines:\n" + "\n".join(text.splitlines()[-60:]))
            if args.keep_logs:
                kept = Path(tempfile.gettempdir()) / f"tg-soak-{token}.log"
                shutil.copyfile(log, kept)
                print(f"server log kept at {kept}")
    return verdict(failures, "no 5xx, no connection errors, usage exact live and from the ledger")


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
