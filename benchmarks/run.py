"""Throughput and latency of the gateway against a bare Starlette app, measured with wrk.

Variants, each served alone by one uvicorn worker pinned to core 0 (wrk runs on core 1):

    A        the bare app (``benchmarks.apps:bare_app``)
    F        the floor: a minimal pure-ASGI middleware that counts per key and adds the two
             rate-limit headers (``apps.floor_app``): what no gateway can go below
    M        the app behind TenantGateway with the embedded memory stores, a plan with a burst
             limit and no monthly quota (like the default enterprise plan)
    M-quota  as M, on a plan with a burst limit and a finite monthly quota (like free and pro)
    R        as M, on PostgreSQL + Redis
    R-quota  as M-quota, on PostgreSQL + Redis (the exact quota decision in Redis)
    C-quota  as R-quota, on a Redis Cluster of three primaries the benchmark starts on free
             local ports (``redis_cluster.py``) instead of the one Redis
    (``apps.BENCH_PLANS``: limits set so high that no call is refused, but every one is checked)
    S        the bare app behind slowapi (``SlowAPIMiddleware``, Redis storage, a limit keyed by
             the API key header that never refuses): the baseline the issue names; skipped with a
             message when slowapi is not installed (``pip install slowapi``)

Every measured run gets a fresh server process, a fresh tenant and a warm-up run; variants are
interleaved round by round. After each gateway run the tenant's usage (admin API) is compared
with the number of 2xx responses wrk saw (warm-up + measured), and with the number of pings the
wrapped app itself answered in that process. wrk does not count requests still in flight when it
stops (at most one per connection per wrk run), so the first comparison can differ by that much;
it is reported as MISMATCH all the same. Usage: ``.venv/bin/python -m benchmarks.run``.

Besides req/s, each run reports the server process's CPU time per request (``/proc/<pid>/stat``,
user + system) and the CPU steal the machine saw meanwhile: on a shared virtual machine steal
moves req/s from run to run, while CPU time per request leaves it out.

Event loop and HTTP parser: by default uvloop and httptools when importable (else asyncio and
h11), as uvicorn itself would choose; ``--uvloop`` requires uvloop + httptools, ``--asyncio``
forces asyncio + h11. The choice is printed in the table title.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks import common
from benchmarks.apps import HITS_PATH
from benchmarks.common import (
    check_redis,
    cpu_seconds,
    create_database,
    delete_redis_keys,
    drop_database,
    ensure_installed,
    http_json,
)
from benchmarks.launch import HOST, REPO, Server
from benchmarks.redis_cluster import LocalCluster

PING_PATH = "/api/v1/ping"
REDIS_URL = "redis://127.0.0.1:6379/13"
SERVER_CORE = "0"
WRK_CORE = "1"


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    factory: str
    database: bool = False
    redis: bool = False
    cluster: bool = False
    """On a Redis Cluster of three primaries (started for the run) instead of the one Redis."""
    plan: str | None = None
    """The gateway plan of the tenant registered for the run (gateway variants only)."""
    sends_key: bool = False
    """Send a made-up API key although no tenant is registered (slowapi keys its limit on it)."""
    requires: str | None = None
    """A module the variant needs (pip installs it under the same name)."""

    @property
    def gated(self) -> bool:
        return self.plan is not None


VARIANTS = (
    Variant("A", "benchmarks.apps:bare_app"),
    Variant("F", "benchmarks.apps:floor_app", sends_key=True),
    Variant("M", "benchmarks.apps:gateway_app", plan="bench"),
    Variant("M-quota", "benchmarks.apps:gateway_app", plan="bench_quota"),
    Variant("R", "benchmarks.apps:gateway_app", database=True, redis=True, plan="bench"),
    Variant(
        "R-quota", "benchmarks.apps:gateway_app", database=True, redis=True, plan="bench_quota"
    ),
    Variant(
        "C-quota", "benchmarks.apps:gateway_app", database=True, cluster=True, plan="bench_quota"
    ),
    Variant("S", "benchmarks.apps:slowapi_app", redis=True, sends_key=True, requires="slowapi"),
)


def pick_variants(
    parser: argparse.ArgumentParser, names: str, optional: bool = False
) -> list[Variant]:
    """The variants named in a comma-separated list, in the table's order (``parser.error`` for
    an unknown name). Those that need a module of their own (S: slowapi) are known only when
    ``optional``, and skipped with a message if the module is missing."""
    known = {v.name for v in VARIANTS if optional or v.requires is None}
    chosen = {name.strip() for name in names.split(",") if name.strip()}
    if not chosen or chosen - known:
        parser.error(f"unknown variants {sorted(chosen - known)}; choose from {sorted(known)}")
    picked = []
    for variant in VARIANTS:
        if variant.name not in chosen:
            continue
        if variant.requires is not None and not importable(variant.requires):
            print(
                f"variant {variant.name} skipped: {variant.requires} is not installed"
                f" (pip install {variant.requires})",
                flush=True,
            )
            continue
        picked.append(variant)
    return picked


def load_options(
    doc: str | None, variants: str, seconds: int, warmup: int, connections: int
) -> argparse.ArgumentParser:
    """A parser with the options of a script that serves variants as this one does and loads
    each with wrk (``instructions.py``, ``spy.py``): which variants, how long wrk loads each
    after a warm-up, with how many connections, on which event loop."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--variants", default=variants)
    parser.add_argument("--seconds", type=int, default=seconds, help="measured load per variant")
    parser.add_argument("--warmup", type=int, default=warmup, help="seconds of load before it")
    parser.add_argument("--connections", type=int, default=connections, help="wrk connections")
    parser.add_argument("--asyncio", action="store_true", help="asyncio + h11, not uvloop")
    return parser


def parse_load_options(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """``load_options``' arguments, checked: ``variants`` picked, the server ``mode`` set."""
    args = parser.parse_args(argv)
    if min(args.seconds, args.warmup, args.connections) < 1:
        parser.error("--seconds, --warmup and --connections must be positive")
    args.variants = pick_variants(parser, args.variants)
    args.mode = server_mode("asyncio" if args.asyncio else None)
    return args


@dataclass(frozen=True, slots=True)
class ServerMode:
    """The event loop and HTTP parser every uvicorn server of a run uses."""

    loop: str  # "uvloop" or "asyncio"
    http: str  # "httptools" or "h11"
    how: str  # why: the option given, or what was importable

    @property
    def args(self) -> list[str]:
        return ["--loop", self.loop, "--http", self.http]

    def describe(self) -> str:
        return f"loop {self.loop} + http {self.http} ({self.how})"


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def server_mode(option: str | None) -> ServerMode:
    """``--uvloop`` / ``--asyncio``, or by default what uvicorn's ``auto`` would pick."""
    has_uvloop, has_httptools = importable("uvloop"), importable("httptools")
    if option == "uvloop":
        if not (has_uvloop and has_httptools):
            raise SystemExit("--uvloop needs uvloop and httptools: pip install uvloop httptools")
        return ServerMode("uvloop", "httptools", "--uvloop")
    if option == "asyncio":
        return ServerMode("asyncio", "h11", "--asyncio")
    missing = [
        name for name, ok in (("uvloop", has_uvloop), ("httptools", has_httptools)) if not ok
    ]
    return ServerMode(
        "uvloop" if has_uvloop else "asyncio",
        "httptools" if has_httptools else "h11",
        "default: " + (f"{' and '.join(missing)} not installed" if missing else "both installed"),
    )


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    non_2xx: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    socket_errors: str | None

    @property
    def ok_responses(self) -> int:
        return self.requests - self.non_2xx


@dataclass(frozen=True, slots=True)
class UsageCheck:
    expected: int
    api_calls: int
    route_2xx: int
    rejected_calls: int
    app_served: int
    connections: int

    @property
    def ok(self) -> bool:
        return self.api_calls == self.expected and self.rejected_calls == 0

    def describe(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        text = (
            f"usage {verdict}: api_calls={self.api_calls} wrk 2xx={self.expected}"
            f" (diff {self.api_calls - self.expected:+d}); by_route 2xx={self.route_2xx};"
            f" rejected_calls={self.rejected_calls}; app served={self.app_served}"
            f" (api_calls {'==' if self.api_calls == self.app_served else '!='} app served)"
        )
        if not self.ok and 0 < self.api_calls - self.expected <= 2 * self.connections:
            text += (
                f" [within the {2 * self.connections} requests that may be in flight when the"
                " warm-up and measured wrk runs stop: answered by the server, not counted by wrk]"
            )
        return text


@dataclass(slots=True)
class RunRecord:
    variant: Variant
    round: int
    result: WrkResult
    warmup: WrkResult
    usage: UsageCheck | None
    cpu: CpuSample
    server_log: list[str] = field(default_factory=list)

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu.server_seconds / max(1, self.result.requests) * 1e6

    @property
    def kernel_us_per_request(self) -> float:
        return self.cpu.kernel_seconds / max(1, self.result.requests) * 1e6


# -- CPU accounting -------------------------------------------------------------------------


def machine_ticks() -> tuple[int, int]:
    """(all ticks, steal ticks) of every CPU, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values[:8]), values[7]


@dataclass(frozen=True, slots=True)
class CpuSample:
    server_seconds: float
    """CPU time the server process used during the measured run."""
    kernel_seconds: float
    """The part of it spent in the kernel (system time: sockets, epoll)."""
    steal_share: float
    """Share of the machine's CPU time the hypervisor gave to others meanwhile (steal)."""


@contextlib.contextmanager
def cpu_sampler(pid: int) -> Iterator[list[CpuSample]]:
    taken: list[CpuSample] = []
    user_before, kernel_before = cpu_seconds(pid)
    total_before, steal_before = machine_ticks()
    yield taken
    total, steal = machine_ticks()
    user, kernel = cpu_seconds(pid)
    taken.append(
        CpuSample(
            server_seconds=user + kernel - user_before - kernel_before,
            kernel_seconds=kernel - kernel_before,
            steal_share=(steal - steal_before) / max(1, total - total_before),
        )
    )


# -- environment ----------------------------------------------------------------------------

HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def check_halt_polling(nanoseconds: int | None) -> None:
    """``--halt-poll-ns NS``: measure with this KVM guest's idle vCPUs polling NS ns before they
    halt. Waking a halted vCPU takes an inter-processor interrupt, which exits to the
    hypervisor: when a slower server leaves wrk's core idle, nearly every response pays for one
    (docs/performance.md, Kernel time). The script does not change the machine: unless the
    setting is already NS, it prints the commands that set it and put it back, for root to run,
    and stops."""
    if nanoseconds is None:
        return
    try:
        current = HALT_POLL.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"--halt-poll-ns needs {HALT_POLL} (a KVM guest): {exc}") from exc
    if current != str(nanoseconds):
        raise SystemExit(
            f"{HALT_POLL} is {current}, not {nanoseconds}. As root, set it for the run:\n"
            f"  echo {nanoseconds} > {HALT_POLL}\n"
            f"run this again, and put the machine's value back after it:\n"
            f"  echo {current} > {HALT_POLL}"
        )


def ensure_wrk() -> str:
    return ensure_installed("wrk", "wrk")


SLOWAPI_KEYS = "LIMITS:LIMITER/{prefix}*"  # limits' storage prefix + slowapi's key_prefix


def clean_redis(prefix: str) -> None:
    deleted = delete_redis_keys(REDIS_URL, prefix + "*", SLOWAPI_KEYS.format(prefix=prefix))
    print(f"deleted {deleted} Redis keys of this run (prefix {prefix!r})", flush=True)


# -- servers --------------------------------------------------------------------------------


def serve(
    variant: Variant,
    env: dict[str, str],
    log: Path,
    mode: ServerMode,
    cwd: Path = REPO,
    wrapper: Sequence[str] = (),
    ready_timeout: float = 60.0,
) -> Server:
    """The variant's server, pinned to the server core; ``wrapper`` runs it (valgrind). Its pid
    is the server's: ``taskset`` execs the wrapper or Python, and valgrind runs its program in
    place. ``with`` it: ready inside, stopped after."""
    return Server(
        "--workers", "1", "--log-level", "warning", "--no-access-log", *mode.args,
        command=(sys.executable, "-m", "uvicorn", variant.factory, "--factory"),
        prefix=("taskset", "-c", SERVER_CORE, *wrapper),
        env=env, cwd=cwd, log=log, ready_timeout=ready_timeout,
    )  # fmt: skip


@contextlib.contextmanager
def bench_stores(variants: Sequence[Variant]) -> Iterator[Callable[[Variant], dict[str, str]]]:
    """A throw-away PostgreSQL database and Redis key prefix for the variants that use them,
    removed afterwards; yields what gives a variant's server its environment: every
    ``TG_BENCH_*`` variable ``benchmarks.apps`` reads, empty where the variant does without."""
    token = secrets.token_hex(4)
    database, prefix = f"tg_bench_{token}", f"tgbench:{token}:"
    uses_redis = any(v.redis for v in variants)
    if uses_redis:
        check_redis(REDIS_URL)
    database_url: str | None = None
    cluster: LocalCluster | None = None

    def environment(variant: Variant) -> dict[str, str]:
        redis_url = REDIS_URL if variant.redis else ""
        if variant.cluster and cluster is not None:
            redis_url = cluster.url
        return {
            "TG_BENCH_DATABASE_URL": database_url if variant.database and database_url else "",
            "TG_BENCH_REDIS_URL": redis_url,
            "TG_BENCH_REDIS_PREFIX": prefix,
            "TG_BENCH_SLOWAPI_LIMIT": "",
        }

    try:
        if any(v.database for v in variants):
            database_url = create_database(database)
        if any(v.cluster for v in variants):
            cluster = LocalCluster(primaries=3)  # thrown away after the run, keys and all
            print(f"Redis Cluster: {cluster.url}", flush=True)
        yield environment
    finally:
        if cluster is not None:
            cluster.stop()
        if uses_redis:
            try:
                clean_redis(prefix)
            except redis.RedisError as exc:
                print(f"could not delete Redis keys under {prefix!r}: {exc}", flush=True)
        if database_url is not None:
            drop_database(database)


# -- HTTP -----------------------------------------------------------------------------------


def caller(variant: Variant, port: int, run_id: str) -> tuple[str | None, str | None]:
    """(tenant id, API key) the load generator sends: a new tenant's for a gateway variant, a
    made-up key for a variant that only keys on it (the floor's count, slowapi), else none."""
    if variant.plan is not None:
        base, email = f"http://{HOST}:{port}", f"bench-{run_id}@example.com"
        return common.register(base, f"Bench {run_id}", variant.plan, email)
    if variant.sends_key:
        return None, f"bench-{run_id}"
    return None, None


def read_hits(port: int) -> int:
    return int(http_json("GET", f"http://{HOST}:{port}{HITS_PATH}")["ping"])


# -- wrk ------------------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY = r"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$"


def _latency_ms(output: str, pct: int) -> float:
    match = re.search(_LATENCY.format(pct=pct), output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {pct}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    requests = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if requests is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)$", output, re.MULTILINE)
    return WrkResult(
        requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        requests_per_second=float(rate.group(1)),
        p50_ms=_latency_ms(output, 50),
        p99_ms=_latency_ms(output, 99),
        socket_errors=errors.group(1).strip() if errors else None,
    )


def run_wrk(wrk: str, port: int, key: str | None, duration: int, connections: int) -> WrkResult:
    command = [
        "taskset", "-c", WRK_CORE, wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
    ]  # fmt: skip
    if key is not None:
        command += ["-H", f"Authorization: Bearer {key}"]
    command.append(f"http://{HOST}:{port}{PING_PATH}")
    done = subprocess.run(
        command, check=False, timeout=duration + 60, text=True, capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


# -- one run --------------------------------------------------------------------------------


def route_2xx(usage: dict[str, Any]) -> int:
    total = 0
    for route in usage.get("by_route", []):
        total += int(route.get("by_status", {}).get("2xx", 0))
    return total


def measure(
    variant: Variant,
    round_number: int,
    args: argparse.Namespace,
    wrk: str,
    env: dict[str, str],
    log_dir: Path,
) -> RunRecord:
    run_id = f"{variant.name.lower()}-{round_number}-{secrets.token_hex(3)}"
    log = log_dir / f"{run_id}.log"
    with serve(variant, env, log, args.mode) as server:
        port = server.port
        tenant_id, key = caller(variant, port, run_id)
        warmup = run_wrk(wrk, port, key, args.warmup, args.connections)
        with cpu_sampler(server.pid) as cpu:
            result = run_wrk(wrk, port, key, args.duration, args.connections)
        usage = None
        if tenant_id is not None and key is not None:
            time.sleep(args.settle)
            report = common.read_usage(server.base, tenant_id, key)
            usage = UsageCheck(
                expected=warmup.ok_responses + result.ok_responses,
                api_calls=int(report["api_calls"]),
                route_2xx=route_2xx(report),
                rejected_calls=int(report["rejected_calls"]),
                app_served=read_hits(port),
                connections=args.connections,
            )
    lines = [line for line in server.output().splitlines() if line.strip()]
    return RunRecord(variant, round_number, result, warmup, usage, cpu[0], lines)


def print_run(record: RunRecord) -> None:
    r, w = record.result, record.warmup
    print(
        f"[round {record.round}] {record.variant.name:8} {r.requests_per_second:9.0f} req/s"
        f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  requests {r.requests}"
        f" (+{w.requests} warm-up)  non-2xx {r.non_2xx} (+{w.non_2xx} warm-up)"
        f"  server CPU {record.cpu_us_per_request:.1f} µs/request"
        f" ({record.kernel_us_per_request:.1f} in the kernel)"
        f"  steal {record.cpu.steal_share:.1%}",
        flush=True,
    )
    for label, res in (("warm-up", w), ("measured", r)):
        if res.socket_errors:
            print(f"    {label} socket errors: {res.socket_errors}", flush=True)
    if record.usage is not None:
        print(f"    {record.usage.describe()}", flush=True)
    if record.server_log:
        print(f"    server log ({len(record.server_log)} lines), first lines:", flush=True)
        for line in record.server_log[:15]:
            print(f"      {line}", flush=True)


# -- report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    variant: str
    rps: float
    p50: float
    p99: float
    ratio: float
    added_p99: float
    cpu_us: float
    kernel_us: float
    cpu_ratio: float
    non_2xx: int
    usage: str


def summarise(records: list[RunRecord], variants: Sequence[Variant]) -> list[Row]:
    by_name = {v.name: [r for r in records if r.variant.name == v.name] for v in variants}
    medians = {
        name: (
            statistics.median(r.result.requests_per_second for r in runs),
            statistics.median(r.result.p50_ms for r in runs),
            statistics.median(r.result.p99_ms for r in runs),
        )
        for name, runs in by_name.items()
        if runs
    }
    base = medians.get("A")
    cpu = {
        name: statistics.median(r.cpu_us_per_request for r in runs)
        for name, runs in by_name.items()
        if runs
    }
    rows = []
    for name, runs in by_name.items():
        if not runs:
            continue
        rps, p50, p99 = medians[name]
        kernel = statistics.median(r.kernel_us_per_request for r in runs)
        checks = [r.usage for r in runs if r.usage is not None]
        usage = "—"
        if checks:
            exact = sum(c.api_calls == c.app_served for c in checks)
            usage = f"wrk {sum(c.ok for c in checks)}/{len(checks)}, app {exact}/{len(checks)}"
        rows.append(
            Row(
                variant=name,
                rps=rps,
                p50=p50,
                p99=p99,
                ratio=rps / base[0] if base else float("nan"),
                added_p99=p99 - base[2] if base else float("nan"),
                cpu_us=cpu[name],
                kernel_us=kernel,
                cpu_ratio=cpu["A"] / cpu[name] if "A" in cpu else float("nan"),
                non_2xx=sum(r.result.non_2xx + r.warmup.non_2xx for r in runs),
                usage=usage,
            )
        )
    return rows


HEADERS = ("variant", "req/s (median)", "p50 ms", "p99 ms", "vs A", "+p99 vs A ms",
           "server CPU µs/req", "of which kernel", "A's CPU / CPU", "non-2xx",
           "usage = wrk 2xx / app served")  # fmt: skip


def cells(row: Row) -> tuple[str, ...]:
    return (
        row.variant,
        f"{row.rps:,.0f}",
        f"{row.p50:.2f}",
        f"{row.p99:.2f}",
        f"{row.ratio:.2f}",
        f"{row.added_p99:+.2f}",
        f"{row.cpu_us:.1f}",
        f"{row.kernel_us:.1f}",
        f"{row.cpu_ratio:.2f}",
        str(row.non_2xx),
        row.usage,
    )


def text_table(rows: list[Row]) -> str:
    return common.text_table(HEADERS, [cells(row) for row in rows])


def markdown_table(rows: list[Row]) -> str:
    return common.markdown_table(HEADERS, [cells(row) for row in rows])


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before reading usage")
    parser.add_argument(
        "--variants",
        default=",".join(v.name for v in VARIANTS),
        help="comma-separated subset of " + ", ".join(v.name for v in VARIANTS),
    )
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument(
        "--uvloop",
        dest="loop",
        action="store_const",
        const="uvloop",
        help="serve with --loop uvloop --http httptools (pip install uvloop httptools)",
    )
    loop.add_argument(
        "--asyncio",
        dest="loop",
        action="store_const",
        const="asyncio",
        help="serve with --loop asyncio --http h11",
    )
    parser.add_argument(
        "--halt-poll-ns",
        type=int,
        metavar="NS",
        help=f"measure with {HALT_POLL} at NS (idle vCPUs poll NS ns before halting), which"
        " takes the guest's wake-up interrupts out of the comparison: checked, not set (the"
        " commands to set it are printed)",
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or args.warmup < 1 or args.connections < 1:
        parser.error("--duration, --rounds, --warmup and --connections must be positive")
    if args.halt_poll_ns is not None and args.halt_poll_ns < 0:
        parser.error("--halt-poll-ns must not be negative")
    args.variants = pick_variants(parser, args.variants, optional=True)
    if not args.variants:
        parser.error("no variant left to run")
    args.mode = server_mode(args.loop)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_halt_polling(args.halt_poll_ns)
    variants: list[Variant] = args.variants
    wrk = ensure_wrk()
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs; server and wrk share a core", flush=True)
    mode: ServerMode = args.mode
    print(f"uvicorn: 1 worker on core {SERVER_CORE}, {mode.describe()}", flush=True)
    print(
        f"wrk on core {WRK_CORE}: -t1 -c{args.connections}, {args.warmup}s warm-up +"
        f" {args.duration}s measured, {args.rounds} rounds",
        flush=True,
    )

    records: list[RunRecord] = []
    with (
        bench_stores(variants) as environment,
        tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp,
    ):
        for round_number in range(1, args.rounds + 1):
            for variant in variants:
                record = measure(variant, round_number, args, wrk, environment(variant), Path(tmp))
                records.append(record)
                print_run(record)

    rows = summarise(records, variants)
    title = (
        f"uvicorn 1 worker, {mode.describe()}; wrk -t1 -c{args.connections};"
        f" {args.duration}s x {args.rounds} interleaved rounds (+{args.warmup}s warm-up each)"
    )
    if args.halt_poll_ns is not None:
        title += f"; guest halt-polling {args.halt_poll_ns:,} ns"
    print()
    print(title)
    print(text_table(rows))
    print()
    print(f"Results ({title}):")
    print()
    print(markdown_table(rows))
    checks = [r.usage for r in records if r.usage is not None]
    wrk_mismatches = sum(not c.ok for c in checks)
    app_mismatches = sum(c.api_calls != c.app_served or c.rejected_calls != 0 for c in checks)
    non_2xx = sum(r.result.non_2xx + r.warmup.non_2xx for r in records)
    print()
    print(
        f"usage checks: {wrk_mismatches}/{len(checks)} differ from wrk's 2xx count,"
        f" {app_mismatches}/{len(checks)} from the pings the app answered;"
        f" non-2xx responses in total: {non_2xx}"
    )
    steal = sorted(r.cpu.steal_share for r in records)
    print(
        f"CPU steal (time the hypervisor gave to other guests) during measured runs:"
        f" median {statistics.median(steal):.1%}, max {steal[-1]:.1%}."
        " Server CPU µs/request leaves steal out, so its ratio is the steadier of the two."
    )
    if args.halt_poll_ns is not None:
        print(f"{HALT_POLL} is still {args.halt_poll_ns}: put the machine's value back.")
    return 1 if app_mismatches or non_2xx else 0


if __name__ == "__main__":
    sys.exit(main())
