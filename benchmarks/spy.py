"""Where a served request's time goes: py-spy samples of the server under wrk's load.

Each variant of ``run.py`` (by default A, M and R-quota) is served as ``run.py`` serves it (one
uvicorn worker on core 0), warmed up, then loaded by wrk on core 1 while ``py-spy record``
samples the server's Python stacks ``--rate`` times a second. Samples of the thread waiting in
``epoll`` are idle and left out (py-spy's default). Each sample is charged to the innermost
Python frame of its stack, so the C code a line calls (a socket write, the HTTP parser, a dict
lookup) counts on that line, and the event loop's own C code (uvloop) on the frame that runs
the loop. Printed per variant: the share of samples by the package of that frame, and the
busiest lines. Every frame of the wrapped app runs inside the gateway's, so "tenant_gateway"
is the gateway's own code, not what it calls.

py-spy samples without stopping the server (``--nonblocking``). ``--calibrate`` shows why, on a
program whose three steps are timed alone first, then sampled in a loop. On this VM
(2026-11-27, three runs of 8 s per mode; shares among the three steps), a socket send +
receive at 36–42 % of the time got 28–36 % of the non-blocking samples, Python arithmetic at
54–59 % got 55–65 %, a ``getpid()`` at 5–6 % got 7–10 %; py-spy's default, which stops the
process for each sample, gave them 36–37 %, 0.1–0.3 % and 63–64 %: its stops land on system
calls. So the shares below are within about ten points for Python code and somewhat short on
system calls (the kernel time per request is ``run.py``'s column).

The sampler shares the load generator's core: the shares are proportions, not a throughput
(``run.py`` measures that). Usage: ``.venv/bin/python -m benchmarks.spy [--variants A,M,R-quota]
[--seconds 10] [--rate 400] [--top 12] [--calibrate]``. Needs py-spy (the ``bench`` extra) and wrk;
PostgreSQL and Redis for R*.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import common, run
from benchmarks.launch import REPO

# One frame of py-spy's raw (collapsed) output: "function (path/to/file.py:line)".
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

EVENT_LOOP = "event loop (uvloop, asyncio)"
OTHER = "other (stdlib, site-packages)"
# Where a frame's file lives → the row it is counted in: the top-level package of an installed
# distribution, or of this checkout; the standard library's asyncio.
INSTALLED = {
    "tenant_gateway": "tenant_gateway",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "uvloop": EVENT_LOOP,
    "redis": "redis-py",
    "asyncpg": "asyncpg",
}
CHECKOUT = {"tenant_gateway": "tenant_gateway", "benchmarks": "the app (benchmarks.apps)"}
ROWS = (*dict.fromkeys([*INSTALLED.values(), *CHECKOUT.values()]), OTHER)
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def _top_package(file: str) -> tuple[str, str] | None:
    """(top-level package, path inside it) for an installed or checked-out file."""
    if "/site-packages/" in file:
        top, _, rest = file.rsplit("/site-packages/", 1)[1].partition("/")
        return top, rest
    try:
        parts = Path(file).resolve().relative_to(REPO).parts
    except ValueError:
        return None
    return (parts[0], "/".join(parts[1:])) if len(parts) > 1 else None


def _in_stdlib(file: str) -> str | None:
    """The path inside the standard library, for a file of it."""
    path = Path(file)
    if not path.is_absolute() or not path.resolve().is_relative_to(_STDLIB):
        return None
    return path.resolve().relative_to(_STDLIB).as_posix()


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: str

    @property
    def package(self) -> str:
        found = _top_package(self.file)
        if found is not None:
            top, _ = found
            named = INSTALLED.get(top) if "/site-packages/" in self.file else CHECKOUT.get(top)
            return named or OTHER
        in_stdlib = _in_stdlib(self.file)
        return EVENT_LOOP if in_stdlib is not None and in_stdlib.startswith("asyncio/") else OTHER

    def describe(self) -> str:
        found = _top_package(self.file)
        if found is not None:
            file = f"{found[0]}/{found[1]}"
        else:
            file = _in_stdlib(self.file) or Path(self.file).name
        return f"{self.function} ({file}:{self.line})"


def parse_frame(text: str) -> Frame:
    found = _FRAME.match(text)
    if found is None:
        return Frame(text, "", "")
    return Frame(found["function"], found["file"], found["line"] or "")


@dataclass(slots=True)
class Profile:
    variant: str
    samples: int = 0
    by_package: collections.Counter[str] = field(default_factory=collections.Counter)
    by_line: collections.Counter[str] = field(default_factory=collections.Counter)
    by_function: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, stack: str, count: int) -> None:
        leaf = parse_frame(stack.rpartition(";")[2])
        self.samples += count
        self.by_package[leaf.package] += count
        self.by_line[leaf.describe()] += count
        self.by_function[leaf.function] += count

    def share(self, count: int) -> str:
        return f"{count / max(1, self.samples):.1%}"


def read_raw(path: Path, variant: str) -> Profile:
    """py-spy's ``--format raw``: one line per distinct stack, "frame;frame;... count",
    outermost frame first (with ``--threads``, a thread frame leads)."""
    profile = Profile(variant)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            profile.add(stack, int(count))
    return profile


def record(variant: run.Variant, args: argparse.Namespace, wrk: str, env: dict[str, str]) -> Path:
    """Serve ``variant``, warm it up, and sample it while wrk loads it; the raw profile."""
    tmp: Path = args.tmp
    out = tmp / f"{variant.name}.raw"
    with run.serve(variant, env, tmp / f"{variant.name}.log", args.mode) as server:
        port, pid = server.port, server.pid
        _, key = run.caller(variant, port, secrets.token_hex(3))
        run.run_wrk(wrk, port, key, args.warmup, args.connections)
        sample = [
            "taskset", "-c", run.WRK_CORE, args.py_spy, "record", "--pid", str(pid),
            "--rate", str(args.rate), "--duration", str(args.seconds),
            "--nonblocking", "--format", "raw", "--full-filenames", "--output", str(out),
        ]  # fmt: skip
        sampler = subprocess.Popen(
            sample, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            # wrk runs 2 s longer than the sampler; samples taken before its load arrives find
            # the server idle in epoll, and idle samples are dropped.
            result = run.run_wrk(wrk, port, key, args.seconds + 2, args.connections)
            _, errors = sampler.communicate(timeout=args.seconds + 60)
        finally:
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait()
        if sampler.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed ({sampler.returncode}):\n{errors}")
        if result.non_2xx or result.socket_errors:
            raise RuntimeError(f"{result.non_2xx} non-2xx, socket errors: {result.socket_errors}")
    return out


def package_rows(profiles: Sequence[Profile]) -> list[tuple[str, ...]]:
    rows = [
        (name, *(p.share(p.by_package[name]) for p in profiles))
        for name in ROWS
        if any(p.by_package[name] for p in profiles)
    ]
    rows.append(("samples", *(f"{p.samples:,}" for p in profiles)))
    return rows


# -- calibration -----------------------------------------------------------------------------

# A program with known proportions: each step timed alone, then the three in a loop that py-spy
# samples. The steps' functions are what the samples are charged to.
_CALIBRATION_PROGRAM = """
import json, os, socket, sys, time
left, right = socket.socketpair()
PAYLOAD = b"x" * 200
def system_calls():
    left.send(PAYLOAD)
    right.recv(4096)
def python_code():
    total = 0
    for i in range(60):
        total += i * i
    return total
def getpid_call():
    os.getpid()
def timed(step, n=100_000):
    start = time.perf_counter_ns()
    for _ in range(n):
        step()
    return (time.perf_counter_ns() - start) / n
steps = {step.__name__: timed(step) for step in (system_calls, python_code, getpid_call)}
print(json.dumps(steps), flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    system_calls()
    python_code()
    getpid_call()
"""
CALIBRATION_STEPS = ("system_calls", "python_code", "getpid_call")


def calibrate(args: argparse.Namespace) -> int:
    """How far py-spy's shares are from timed ones on this machine, in both sampling modes."""
    sampling = {"py-spy --nonblocking (this script)": ["--nonblocking"], "py-spy, stopping": []}
    child = subprocess.Popen(
        [sys.executable, "-c", _CALIBRATION_PROGRAM, str(2 * args.seconds + 5)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = child.stdout.readline() if child.stdout is not None else ""
        nanoseconds: dict[str, float] = json.loads(first_line)
        sampled: dict[str, collections.Counter[str]] = {}
        with tempfile.TemporaryDirectory(prefix="tg-spy-") as tmp:
            for label, options in sampling.items():
                out = Path(tmp) / "calibration.raw"
                command = [
                    args.py_spy, "record", "--pid", str(child.pid), *options,
                    "--rate", str(args.rate), "--duration", str(args.seconds),
                    "--format", "raw", "--output", str(out),
                ]  # fmt: skip
                subprocess.run(command, check=True, capture_output=True, timeout=120)
                sampled[label] = read_raw(out, label).by_function
    finally:
        child.kill()
        child.wait()
    # Shares among the three steps, timed and sampled alike: the loop around them is left out
    # of both.
    timed_total = sum(nanoseconds[step] for step in CALIBRATION_STEPS)
    rows = []
    for step in CALIBRATION_STEPS:
        cells = [f"{nanoseconds[step]:,.0f} ns", f"{nanoseconds[step] / timed_total:.1%}"]
        for counts in sampled.values():
            in_steps = sum(counts[name] for name in CALIBRATION_STEPS)
            cells.append(f"{counts[step] / max(1, in_steps):.1%}")
        rows.append((step, *cells))
    print(f"py-spy calibration: {args.rate} samples/s for {args.seconds}s per mode")
    print(common.text_table(("step", "timed alone", "timed share", *sampling), rows))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = run.load_options(__doc__, "A,M,R-quota", seconds=10, warmup=3, connections=32)
    parser.add_argument("--rate", type=int, default=400, help="samples per second")
    parser.add_argument("--top", type=int, default=12, help="busiest lines shown per variant")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="instead of serving, sample a program whose steps are timed: py-spy's error here",
    )
    args = run.parse_load_options(parser, argv)
    if min(args.rate, args.top) < 1:
        parser.error("--rate and --top must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants: list[run.Variant] = args.variants
    args.py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
        "py-spy"
    )
    if args.py_spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    if args.calibrate:
        return calibrate(args)
    wrk = run.ensure_wrk()
    profiles: list[Profile] = []
    with (
        run.bench_stores(variants) as environment,
        tempfile.TemporaryDirectory(prefix="tg-spy-") as tmp,
    ):
        args.tmp = Path(tmp)
        for variant in variants:
            raw = record(variant, args, wrk, environment(variant))
            profiles.append(read_raw(raw, variant.name))
            print(f"{variant.name}: {profiles[-1].samples:,} samples", flush=True)
    title = (
        f"py-spy, {args.rate} samples/s for {args.seconds}s under wrk -c{args.connections};"
        f" uvicorn 1 worker, {args.mode.describe()}; share of samples by the innermost frame"
    )
    headers = ("where the sample was", *(p.variant for p in profiles))
    print()
    print(title)
    print(common.text_table(headers, package_rows(profiles)))
    print()
    print(common.markdown_table(headers, package_rows(profiles)))
    for profile in profiles:
        print()
        print(f"{profile.variant}: busiest lines ({profile.samples:,} samples)")
        lines = [
            (where, profile.share(count)) for where, count in profile.by_line.most_common(args.top)
        ]
        print(common.text_table(("innermost frame", "share"), lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
