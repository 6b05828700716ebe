"""Where a request's time goes: the gateway's hot path in process, with no server or socket.

Builds the bare ping app (``apps.bare_app``) and a ``TenantGateway`` around it on the embedded
memory stores (``apps.BENCH_PLANS``: "bench" has a burst limit and no monthly quota,
"bench_quota" both, so each call takes the quota path too), registers one tenant per plan,
and calls each app directly as an ASGI callable in a tight loop: a new HTTP scope per request
(what a server builds), a ``receive`` that returns an empty body, a ``send`` that keeps the
status. Every 1,000 requests the loop yields to the event loop once, so the gateway's
background work (usage flush, ...) runs as it would in a server. It reports µs per request
(median and best of ``--repeat`` runs of ``--requests``), then runs the gateway loop once more
under ``cProfile`` and prints the top functions by cumulative and by own time, or with
``--pyinstrument`` (``pip install pyinstrument``) pyinstrument's call tree instead.

Usage: ``.venv/bin/python benchmarks/profile.py [--requests 50000] [--repeat 3]
[--plan bench|bench_quota] [--top 25] [--pyinstrument]`` (about 15 s).
No server, so no HTTP parsing, sockets or event-loop I/O are in these numbers: they are the
part of the per-request cost that the gateway's own Python code adds.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    # Run as a script, this folder is sys.path[0], and this file would then shadow the stdlib
    # ``profile`` module that ``cProfile`` imports: put the repository there instead.
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from starlette.types import ASGIApp, Message, Scope  # noqa: E402

from benchmarks.apps import BENCH_PLANS, HITS_PATH, bare_app  # noqa: E402
from benchmarks.records import register  # noqa: E402
from tenant_gateway import TenantGateway  # noqa: E402
from tenant_gateway.clock import Period  # noqa: E402

PING_PATH = "/api/v1/ping"
YIELD_EVERY = 1_000
WARMUP = 2_000
REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


def http_scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    """What uvicorn hands the app for ``GET /api/v1/ping`` (a new dict per request)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": PING_PATH,
        "raw_path": PING_PATH.encode(),
        "query_string": b"",
        "headers": list(headers),
        "state": {},
    }


async def receive() -> Message:
    return REQUEST


@dataclass(slots=True)
class Statuses:
    ok: int = 0
    other: int = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] == 200:
                self.ok += 1
            else:
                self.other += 1


async def drive(app: ASGIApp, headers: list[tuple[bytes, bytes]], requests: int) -> float:
    """Seconds for ``requests`` calls of ``app``; raises if any answer is not 200."""
    statuses = Statuses()
    send = statuses.send
    started = time.perf_counter()
    for number in range(1, requests + 1):
        await app(http_scope(headers), receive, send)
        if number % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    if statuses.ok != requests or statuses.other:
        raise RuntimeError(f"{requests} requests: {statuses.ok} answered 200, {statuses.other} not")
    return elapsed


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    app: ASGIApp
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Timing:
    case: str
    median_us: float
    best_us: float


def headers_for(key: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return headers


async def time_cases(cases: Sequence[Case], requests: int, repeat: int) -> list[Timing]:
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    for case in cases:
        await drive(case.app, case.headers, WARMUP)
    for _ in range(repeat):  # interleaved, like run.py's rounds
        for case in cases:
            seconds = await drive(case.app, case.headers, requests)
            samples[case.name].append(seconds / requests * 1e6)
    return [
        Timing(name, statistics.median(values), min(values)) for name, values in samples.items()
    ]


def short_paths(text: str) -> str:
    """pstats prints full file names; drop the site-packages, stdlib and repository prefixes."""
    paths = sysconfig.get_paths()
    for prefix in (paths["purelib"], paths["stdlib"], str(_HERE.parent)):
        text = text.replace(prefix.rstrip("/") + "/", "")
    return text


def own_time_by_file(stats: pstats.Stats, top: int) -> str:
    """Own time summed per source file: which modules the time is spent in."""
    totals: dict[str, float] = {}
    for (filename, _, _), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = "(built-in functions)" if filename == "~" else filename
        totals[name] = totals.get(name, 0.0) + own
    overall = sum(totals.values()) or 1.0
    lines = [f"{'own s':>8}  {'share':>6}  file"]
    for filename, own in sorted(totals.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{own:8.3f}  {own / overall:6.1%}  {filename}")
    return "\n".join(lines)


async def run_cprofile(case: Case, requests: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await drive(case.app, case.headers, requests)
    finally:
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    for order, label in (("cumulative", "cumulative time"), ("tottime", "own (total) time")):
        out.write(f"\n=== cProfile: {case.name}, {requests:,} requests, top {top} by {label} ===\n")
        stats.sort_stats(order).print_stats(top)
    out.write(f"\n=== cProfile: {case.name}, own time by file (top {top}) ===\n")
    out.write(own_time_by_file(stats, top) + "\n")
    return short_paths(out.getvalue())


async def run_pyinstrument(case: Case, requests: int) -> str:
    from pyinstrument import Profiler  # type: ignore[import-not-found,unused-ignore]

    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    try:
        await drive(case.app, case.headers, requests)
    finally:
        profiler.stop()
    text: str = profiler.output_text(unicode=True, color=False)
    return f"\n=== pyinstrument: {case.name}, {requests:,} requests ===\n{text}"


def table(timings: Sequence[Timing], requests: int, repeat: int) -> str:
    base = timings[0]
    headers = ("case", "µs/request (median)", "best", "requests/s (median)", "+µs vs bare")
    rows = [headers] + [
        (
            t.case,
            f"{t.median_us:.1f}",
            f"{t.best_us:.1f}",
            f"{1e6 / t.median_us:,.0f}",
            f"{t.median_us - base.median_us:+.1f}",
        )
        for t in timings
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    text = [
        f"In process, no server: {repeat} interleaved runs of {requests:,} requests per case"
        f" ({sys.implementation.name} {sys.version.split()[0]}, asyncio loop)"
    ]
    text += [
        "  ".join(
            value.rjust(width) if i else value.ljust(width)
            for i, (value, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    text += ["", "| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    text += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(text)


async def check_usage(gateway: TenantGateway, tenant_id: str, expected: int) -> None:
    """The quota counter must have counted every gateway call of that tenant."""
    usage_key = (tenant_id, str(Period.containing(time.time())))
    calls = (await gateway.services.counters.read(usage_key)).get("calls", 0)
    if calls != expected:
        raise RuntimeError(f"tenant {tenant_id}: {calls} calls counted, {expected} made")


async def main_async(args: argparse.Namespace) -> None:
    gateway = TenantGateway(bare_app(), plans=BENCH_PLANS, public_paths=(HITS_PATH,))
    await gateway.startup()
    try:
        tenants = {plan: await register(gateway, plan) for plan in ("bench", "bench_quota")}
        cases = [
            Case("bare app", bare_app(), headers_for(None)),
            Case("gateway, burst limit", gateway, headers_for(tenants["bench"][1])),
            Case("gateway, burst + monthly quota", gateway, headers_for(tenants["bench_quota"][1])),
        ]
        timings = await time_cases(cases, args.requests, args.repeat)
        made = WARMUP + args.requests * args.repeat
        for tenant_id, _ in tenants.values():
            await check_usage(gateway, tenant_id, made)
        print(table(timings, args.requests, args.repeat), flush=True)
        profiled = cases[1] if args.plan == "bench" else cases[2]
        if args.pyinstrument:
            print(await run_pyinstrument(profiled, args.requests), flush=True)
        else:
            print(await run_cprofile(profiled, args.requests, args.top), flush=True)
    finally:
        await gateway.shutdown()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=50_000, help="requests per timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case")
    parser.add_argument("--top", type=int, default=25, help="functions per cProfile table")
    parser.add_argument(
        "--plan",
        choices=("bench", "bench_quota"),
        default="bench",
        help="the tenant whose gateway loop is profiled (default: bench, no limits)",
    )
    parser.add_argument(
        "--pyinstrument",
        action="store_true",
        help="print pyinstrument's call tree instead of cProfile's tables",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeat < 1 or args.top < 1:
        parser.error("--requests, --repeat and --top must be positive")
    if args.pyinstrument:
        import importlib.util

        if importlib.util.find_spec("pyinstrument") is None:
            parser.error("--pyinstrument needs pyinstrument: pip install pyinstrument")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(main_async(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
