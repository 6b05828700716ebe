"""Many keys, counted in instructions: ``keys.py``'s two loads (one key; ``--keys`` keys in
turn) on a gateway run under ``valgrind --tool=callgrind``, instructions per request.

Not run in CI.
``.venv/bin/python -m benchmarks.keys_instructions [--keys 2000] [--warmup 25] [--seconds 30]``

req/s on this shared machine moves by tens of percent with the other work on it; the count of
instructions the server executes per request does not (within about 1 %). Each variant: a fresh
gateway process under callgrind (``keys.gateway``, ~50x slower: ~200 req/s), loaded with
``--connections`` connections for ``--warmup`` seconds (long enough to call every key once, so
every cold load falls in it), then the counters are zeroed, ``--seconds`` are counted, and the
instructions the whole process executed (event loop, HTTP, gateway, background flushes) are
divided by the pings the app answered meanwhile.

What it does not see: the CPU caches (2,000 keys' entries are not all in the core's caches, one
key's are), the kernel, and time waiting on PostgreSQL or Redis. At ~200 req/s, the work done
once a second (flushes) or once a minute (reloads) weighs about 50 times more per request than
at full speed: a difference between the variants here is an upper bound of the real one. Keep
``--warmup`` + ``--seconds`` under a minute to leave the minute's reload of every key out (it
falls in the window otherwise, as it does in a minute of the steady state). About 3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import ensure_installed, register, scratch_stores, text_table
from benchmarks.keys import PING_PATH, REDIS_URL, create_keys, gateway
from benchmarks.load import Load, Request
from benchmarks.run import read_hits

_SUMMARY = re.compile(rb"^summary: (\d+)$", re.MULTILINE)


async def _load(base: str, keys: Sequence[str], seconds: float, connections: int) -> int:
    """Load for ``seconds``; the answers that were not 200."""
    calls = [Request("GET", PING_PATH, {"Authorization": f"Bearer {key}"}) for key in keys]
    turn = itertools.count()
    load = Load(base, lambda _: calls[next(turn) % len(calls)], connections=connections)
    load.start()
    await asyncio.sleep(seconds)
    await load.stop()
    return sum(1 for status in load.statuses if status != 200) + len(load.errors)


def count(
    keys: Sequence[str], database_url: str, prefix: str, tmp: Path, args: argparse.Namespace
) -> tuple[int, int]:
    """(instructions, requests) of the counted window."""
    out = tmp / f"callgrind.{len(keys)}"
    wrapper = (
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
        "--dump-instr=no", "--collect-jumps=no",
    )  # fmt: skip
    with gateway(database_url, prefix, tmp / "server.log", wrapper) as server:
        failed = asyncio.run(_load(server.base, keys, args.warmup, args.connections))
        before = read_hits(server.port)
        zero = ["callgrind_control", "--zero", str(server.pid)]
        subprocess.run(zero, check=True, capture_output=True)
        failed += asyncio.run(_load(server.base, keys, args.seconds, args.connections))
        dump = ["callgrind_control", "--dump", str(server.pid)]
        subprocess.run(dump, check=True, capture_output=True)
        requests = read_hits(server.port) - before
        if failed:
            raise RuntimeError(f"{failed} calls were not answered 200")
        found = _SUMMARY.search(Path(f"{out}.{server.pid}.1").read_bytes())
    if found is None:
        raise RuntimeError(f"no instruction summary in {out}.{server.pid}.1")
    return int(found.group(1)), requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=25.0, help="seconds before counting")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds counted")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    ensure_installed("valgrind", "valgrind")
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    per_request: dict[str, float] = {}
    rows = []
    with scratch_stores("keys", REDIS_URL) as (database_url, prefix, tmp):
        with gateway(database_url, prefix, tmp / "server.log") as server:
            tenant, admin_key = register(server.base, "Keys", "bench_quota", "k@keys.io")
            keys = create_keys(server.base, tenant, admin_key, args.keys)
        for variant, chosen in (("one", keys[:1]), ("many", keys)):
            instructions, requests = count(chosen, database_url, prefix, tmp, args)
            per_request[variant] = instructions / requests
            rows.append(
                (f"{variant} ({len(chosen):,})", f"{requests:,}", f"{instructions / requests:,.0f}")
            )
            print(f"{variant}: {instructions / requests:,.0f} instructions/request", flush=True)
    rows.append(("many / one", "", f"{per_request['many'] / per_request['one']:.3f}"))
    print(
        f"\ninstructions per request (callgrind), {args.connections} connections,"
        f" {args.seconds:g} s counted after {args.warmup:g} s"
    )
    print(text_table(("keys", "requests", "instructions / request"), rows, rule=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
