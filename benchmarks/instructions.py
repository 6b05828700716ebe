"""CPU instructions per request, counted by valgrind: the bare app against the gateway.

req/s on a shared virtual machine moves by ±20 % between runs (CPU steal, neighbours); an
instruction count does not. Each variant of ``run.py`` is served by one uvicorn worker running
under ``valgrind --tool=callgrind``; after a warm-up load the counters are zeroed, wrk loads the
server for a fixed time, the counters are dumped, and the instructions the whole server process
executed (event loop, HTTP parser, app, gateway, background tasks) are divided by the pings the
app answered meanwhile. Repeated runs on an idle machine agree within about 0.2 % (R-quota, whose
Redis decisions batch by timing, within ~1.5 %: 317,778 and 322,649 in two runs); background
work (flushes every second) is spread over the requests counted, so a loaded machine raises it.

Instructions are not time: the count leaves out caches, the kernel's work and the time spent
waiting on Redis or PostgreSQL. On a noisy day its ratio matched run.py's (M: 0.735 and 0.74);
on a quiet one the time ratio was lower (M: 0.75 by instructions, 0.61 by time). It is the
repeatable figure to compare two versions of the hot path by; ``run.py`` stays the measure of
throughput and latency.

Usage: ``.venv/bin/python -m benchmarks.instructions [--variants A,F,M,M-quota,R,R-quota]``.
Needs valgrind (installed with apt-get if missing) and wrk; PostgreSQL and Redis for R*.
About 40 s a variant.
"""

from __future__ import annotations

import argparse
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import common, run
from benchmarks.common import ensure_installed

_SUMMARY = re.compile(rb"^summary: (\d+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Count:
    variant: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def callgrind(out: Path) -> tuple[str, ...]:
    """valgrind's command line around the server: one dump file per process under ``out``."""
    return (
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
        "--dump-instr=no", "--collect-jumps=no",
    )  # fmt: skip


def load(wrk: str, port: int, key: str | None, seconds: int, connections: int) -> None:
    result = run.run_wrk(wrk, port, key, seconds, connections)
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(f"{result.non_2xx} non-2xx, socket errors: {result.socket_errors}")


def count(
    variant: run.Variant, args: argparse.Namespace, wrk: str, env: dict[str, str], tmp: Path
) -> Count:
    """Instructions the server executed while wrk loaded it, and the pings answered."""
    out = tmp / f"callgrind.{variant.name}"
    with run.serve(
        variant,
        env,
        tmp / f"{variant.name}.log",
        args.mode,
        wrapper=callgrind(out),
        ready_timeout=300,  # valgrind starts Python ~50x slower
    ) as server:
        port, pid = server.port, server.pid
        _, key = run.caller(variant, port, secrets.token_hex(3))
        load(wrk, port, key, args.warmup, args.connections)
        before = run.read_hits(port)
        subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
        load(wrk, port, key, args.seconds, args.connections)
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
        requests = run.read_hits(port) - before
    dump = Path(f"{out}.{pid}.1")
    found = _SUMMARY.search(dump.read_bytes())
    if found is None:
        raise RuntimeError(f"no instruction summary in {dump}")
    return Count(variant.name, requests, int(found.group(1)))


HEADERS = ("variant", "requests", "instructions / request", "vs A", "added / request")


def rows(counts: Sequence[Count]) -> list[tuple[str, ...]]:
    base = next((c.per_request for c in counts if c.variant == "A"), None)
    return [
        (
            c.variant,
            f"{c.requests:,}",
            f"{c.per_request:,.0f}",
            f"{base / c.per_request:.3f}" if base else "—",
            f"{c.per_request - base:+,.0f}" if base else "—",
        )
        for c in counts
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = run.load_options(
        __doc__, "A,F,M,M-quota,R,R-quota", seconds=8, warmup=4, connections=8
    )
    args = run.parse_load_options(parser, argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants: list[run.Variant] = args.variants
    ensure_installed("valgrind", "valgrind")
    ensure_installed("callgrind_control", "valgrind")
    wrk = run.ensure_wrk()
    counts: list[Count] = []
    with (
        run.bench_stores(variants) as environment,
        tempfile.TemporaryDirectory(prefix="tg-instructions-") as tmp,
    ):
        for variant in variants:
            started = time.monotonic()
            counted = count(variant, args, wrk, environment(variant), Path(tmp))
            counts.append(counted)
            print(
                f"{variant.name:8} {counted.per_request:10,.0f} instructions/request"
                f" over {counted.requests:,} requests ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    title = (
        f"instructions per request (callgrind), uvicorn 1 worker, {args.mode.describe()};"
        f" wrk -c{args.connections}, {args.seconds}s counted after {args.warmup}s"
    )
    print()
    print(title)
    print(common.text_table(HEADERS, rows(counts)))
    print()
    print(common.markdown_table(HEADERS, rows(counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
