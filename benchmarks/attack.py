"""One hostile tenant against five steady ones: ``serve --workers 2`` on PostgreSQL + Redis.

Not run in CI. ``.venv/bin/python -m benchmarks.attack [--seconds 30] [--rate 20]``

It starts the CLI server with two workers (a throw-away ``tg_soak_*`` database, a private Redis
prefix in db 11), registers five victim tenants on the professional plan and runs their steady
traffic from 127.0.0.1: each victim calls ``GET /api/v1/projects`` ``--rate`` times a second on
two keep-alive connections, paced (a request leaves on its schedule, not when the last answer
came), so a slower server shows as latency, not as fewer calls. After ``--seconds`` of this
alone, an attacker process starts, each of its attacks from an address of its own (127.0.0.2
and up), and does everything the security review found at once for another ``--seconds``:

- imports whose gateway lines would poison counters (a route tally of 2^63-1, a billion
  refunds), forge audit entries and store unvalidated users;
- holds stalled exports (a client that never reads) and stalled imports (a body that stops);
- floods sign-up and sends well-formed keys nobody issued;
- points its webhook at private addresses in every spelling;
- sends NULs, non-ASCII digits, repeated credentials and made-up methods;
- runs up overage on a plan that has it and switches plans to dodge it.

The victims' figures of the two phases are printed side by side: responses by status,
connection errors, p50 and p99 latency. Then their usage is read back: each victim's
``api_calls`` must equal the 2xx it got. Exit status 0 only when the victims saw no 5xx and no
connection error, their usage is exact and the attack phase's p99 is within 2x the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.common import ADMIN, read_usage, register, scratch_stores, text_table, verdict
from benchmarks.launch import HOST, REPO, Server, log_problems
from benchmarks.load import Load, Request, Summary, percentile_ms
from tenant_gateway.keys import generate_api_key

REDIS_URL = "redis://127.0.0.1:6379/11"
PROJECTS = "/api/v1/projects"
VICTIMS = 5
METERED_CALL = f"{PROJECTS}/prj_none"
"""The attacker's metered calls: a 404 from the app, counted like any call. (Listing the 20,000
projects the attacker imports, so that its exports outlast the sockets' buffers, costs the
server several milliseconds a call: a heavy tenant of the wrapped app, not one of the attacks.)"""
PLANS = {
    "plans": {
        "free": {"max_users": 5, "monthly_calls": 1000, "burst_per_second": 10, "price_cents": 0},
        "professional": {
            "max_users": 50,
            "monthly_calls": 100_000,
            "burst_per_second": 100,
            "price_cents": 4900,
        },
        "metered": {
            "max_users": 5,
            "monthly_calls": 100,
            "burst_per_second": 1000,
            "price_cents": 1000,
            "overage_cents_per_1000": 500,
        },
    }
}


# -- the victims ----------------------------------------------------------------------------


@dataclass(slots=True)
class Victim:
    id: str
    key: str
    ok: int = 0
    refused: int = 0

    def count(self, status: int | None, body: bytes) -> None:
        if status is not None and 200 <= status < 300:
            self.ok += 1
        elif status == 429:
            self.refused += 1

    def calls(self) -> Request:
        headers = {"Authorization": f"Bearer {self.key}"}
        return Request("GET", PROJECTS, headers, done=self.count)


def victims_load(base: str, victims: list[Victim], rate: float) -> Load:
    """Each victim's calls, ``rate`` a second, paced, on two connections of its own."""
    calls = [victim.calls() for victim in victims]
    return Load(base, lambda n: calls[n // 2], connections=2 * len(victims), rate=rate * len(calls))


# -- the attacker (a process of its own, from another address) -----------------------------

_TCP_CLOSED_STATES = {7, 8}  # TCP_CLOSE, TCP_CLOSE_WAIT (linux/tcp_states.h)


def peer_closed(sock: socket.socket) -> bool:
    """Has the server closed this connection? The first byte of TCP_INFO is the state."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in _TCP_CLOSED_STATES
    except OSError:
        return True


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def export_stream(rows: dict[str, list[dict[str, Any]]]) -> bytes:
    header = {
        "format": "tenant-gateway-export",
        "version": 1,
        "tables": [{"name": name, "rows": len(table)} for name, table in rows.items()],
    }
    body = [{"table": name, "row": row} for name, table in rows.items() for row in table]
    return ndjson(header, *body)


class Attacker:
    """Each attack runs in a loop of its own, from an address of its own (127.0.0.2 and up:
    an attacker has more than one), so one attack's refusals do not stop another's."""

    def __init__(self, base: str, port: int, rate: float | None) -> None:
        self.base, self.port, self.deadline = base, port, math.inf
        self.interval = 1 / rate if rate else 0.0
        self.outcomes: dict[str, Counter[str]] = {}
        self._addresses: dict[str, str] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._due: dict[str, float] = {}
        self.tenant: dict[str, Any] = {}

    def address(self, attack: str) -> str:
        """The source address of ``attack``'s connections."""
        if attack not in self._addresses:
            self._addresses[attack] = f"127.0.0.{len(self._addresses) + 2}"
        return self._addresses[attack]

    def client(self, attack: str) -> httpx.AsyncClient:
        if attack not in self._clients:
            transport = httpx.AsyncHTTPTransport(local_address=self.address(attack))
            self._clients[attack] = httpx.AsyncClient(
                base_url=self.base, transport=transport, timeout=30
            )
        return self._clients[attack]

    def note(self, attack: str, outcome: str) -> None:
        self.outcomes.setdefault(attack, Counter())[outcome] += 1

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def call(self, attack: str, method: str, path: str, **kwargs: Any) -> None:
        """One request of ``attack``, at most ``rate`` a second when a rate is set."""
        if self.interval:
            due = self._due.get(attack, time.monotonic())
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self._due[attack] = max(due, time.monotonic() - 1) + self.interval
        try:
            response = await self.client(attack).request(method, path, **kwargs)
            self.note(attack, str(response.status_code))
        except httpx.HTTPError as exc:
            self.note(attack, type(exc).__name__)

    async def as_tenant(self, attack: str, method: str, path: str, **kwargs: Any) -> None:
        """A request of ``attack`` with the attacker's own key."""
        own = {"Authorization": f"Bearer {self.tenant['api_key']}"}
        await self.call(attack, method, path, headers=own, **kwargs)

    async def setup(self) -> None:
        answer = await self.client("setup").post(
            f"{ADMIN}/register",
            json={"name": "Mallory", "plan": "metered", "admin_email": "m@mallory.test"},
        )
        answer.raise_for_status()
        self.tenant = answer.json()
        # Enough application rows (20 MB) that an export outgrows the sockets' buffers, which
        # on loopback take several megabytes: a client that never reads really stalls it.
        projects = [{"id": f"p{n}", "name": "x" * 1000} for n in range(20_000)]
        await self.as_tenant(
            "setup import",
            "POST",
            f"{ADMIN}/{self.tenant['id']}/import",
            content=export_stream({"projects": projects}),
        )

    async def poisoned_imports(self) -> None:
        period = time.strftime("%Y-%m", time.gmtime())
        tid = self.tenant["id"]
        streams: list[dict[str, list[dict[str, Any]]]] = [
            {"tg_usage": [{"period": period, "field": f"route|2xx|GET {PROJECTS}",
                           "value": 2**63 - 1}]},
            {"tg_usage": [{"period": period, "field": "refunded", "value": 10**9}]},
            {"tg_audit": [{"actor": "operator:security-team", "action": "tenant.resume",
                           "at": "2020-01-01T00:00:00Z", "ip": "10.0.0.1"}]},
            {"tg_users": [{"id": "usr_x", "email": "not an email\u202e<script>",
                           "role": "admin", "created_at": "2026-01-01T00:00:00Z"}]},
        ]  # fmt: skip
        while self.running:
            for stream in streams:
                body = export_stream(stream)
                await self.as_tenant(
                    "poisoned import", "POST", f"{ADMIN}/{tid}/import", content=body
                )
                await self.as_tenant("poisoned import", "GET", METERED_CALL)

    async def _stalled(self, attack: str, request: bytes) -> None:
        """One connection that sends ``request`` and then neither reads nor writes; opened
        again whenever the server closes it (seen in the kernel's TCP state, not by reading)."""
        while self.running:
            try:
                _, writer = await asyncio.open_connection(
                    HOST, self.port, local_addr=(self.address(attack), 0)
                )
            except OSError as exc:
                self.note(attack, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            transport = writer.transport
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()  # whatever the server sends stays in the kernel
            writer.write(request)
            self.note(attack, "opened")
            sock = writer.get_extra_info("socket")
            while self.running and not peer_closed(sock):
                await asyncio.sleep(0.5)
            if self.running:
                self.note(attack, "cut by the server")
            writer.close()

    async def stalled_exports(self, count: int) -> None:
        request = (
            f"GET {ADMIN}/{self.tenant['id']}/export HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {self.tenant['api_key']}\r\n\r\n"
        ).encode()
        await asyncio.gather(*(self._stalled("stalled export", request) for _ in range(count)))

    async def stalled_imports(self, count: int) -> None:
        start = export_stream({"projects": [{"id": "q", "name": "q"}] * 1000})[:200]
        request = (
            f"POST {ADMIN}/{self.tenant['id']}/import HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {self.tenant['api_key']}\r\n"
            "Content-Type: application/x-ndjson\r\nContent-Length: 100000000\r\n\r\n"
        ).encode() + start
        await asyncio.gather(*(self._stalled("stalled import", request) for _ in range(count)))

    async def signup_flood(self) -> None:
        n = 0
        while self.running:
            n += 1
            body = {"name": f"Sock {n}", "plan": "professional", "admin_email": f"s{n}@x.test"}
            await self.call("sign-up flood", "POST", f"{ADMIN}/register", json=body)

    async def fake_keys(self) -> None:
        while self.running:
            fake = {"Authorization": f"Bearer {generate_api_key()}"}
            await self.call("fake keys", "GET", PROJECTS, headers=fake)

    async def webhook_ssrf(self) -> None:
        targets = [
            "http://169.254.169.254/", "http://2852039166/", "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/", "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/", "http://0/",
            "http://127.0.0.1:6379/", "http://2130706433:5432/", "http://[::ffff:7f00:1]/",
            "http://localhost/",
        ]  # fmt: skip
        while self.running:
            for url in targets:
                await self.as_tenant(
                    "webhook SSRF", "PUT", f"{ADMIN}/{self.tenant['id']}/webhook", json={"url": url}
                )

    async def bad_input(self) -> None:
        tid = self.tenant["id"]
        paths = [
            f"{ADMIN}/{tid}/users/%00", f"{ADMIN}/{tid}/keys/%00", f"{ADMIN}/?after=%00",
            f"{ADMIN}/{tid}/audit?limit=%C2%B2", f"{ADMIN}/{tid}/audit?before=%C2%B2",
            f"{PROJECTS}/%00", f"{ADMIN}/{tid}/users/%ED%A0%80", f"{ADMIN}/{tid}/usage?period=%00",
        ]  # fmt: skip
        key = self.tenant["api_key"]
        while self.running:
            for path in paths:
                await self.as_tenant("bad input", "GET", path)
            twice = [("Authorization", f"Bearer {key}"), ("Authorization", "Bearer tk_other")]
            await self.call("bad input", "GET", PROJECTS, headers=twice)
            await self.as_tenant("bad input", "FOO+1", PROJECTS)

    async def dodge_overage(self) -> None:
        tid = self.tenant["id"]
        while self.running:
            for _ in range(50):
                await self.as_tenant("overage dodge", "GET", METERED_CALL)
            for plan in ("free", "metered"):
                await self.as_tenant(
                    "overage dodge", "PUT", f"{ADMIN}/{tid}/plan", json={"plan": plan}
                )

    def _spin(self) -> None:
        while self.running:
            pass

    async def run(self, only: frozenset[str], seconds: float) -> dict[str, dict[str, int]]:
        """Set up (outside the measured time), say ``ready``, wait for a line on stdin, then
        attack for ``seconds``."""
        await self.setup()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        self.deadline = time.monotonic() + seconds
        attacks = {
            "imports": self.poisoned_imports(),
            "exports": self.stalled_exports(12),
            "stalled-imports": self.stalled_imports(12),
            "signup": self.signup_flood(),
            "keys": self.fake_keys(),
            "webhooks": self.webhook_ssrf(),
            "input": self.bad_input(),
            "overage": self.dodge_overage(),
        }
        if "cpu" in only:  # the control: no request at all, one core kept busy
            attacks["cpu"] = asyncio.to_thread(self._spin)
        chosen = [attack for name, attack in attacks.items() if not only or name in only]
        for attack in attacks.values():
            if attack not in chosen:
                attack.close()  # never started
        await asyncio.gather(*chosen)
        for client in self._clients.values():
            await client.aclose()
        return {attack: dict(sorted(c.items())) for attack, c in sorted(self.outcomes.items())}


def attacker_main(base: str, seconds: float, only: frozenset[str], rate: float | None) -> int:
    port = int(base.rsplit(":", 1)[1])
    attacker = Attacker(base, port, rate)
    print(json.dumps(asyncio.run(attacker.run(only, seconds))), flush=True)
    return 0


# -- the run --------------------------------------------------------------------------------


def timeline(phase: Summary, start: float, step: float = 5.0) -> str:
    """p99 per ``step`` seconds of the phase: where in it the slow answers were."""
    windows: dict[int, list[float]] = {}
    for at, latency in zip(phase.sent, phase.latencies, strict=True):
        windows.setdefault(int((at - start) // step), []).append(latency)
    return "  ".join(
        f"{index * step:g}s:{percentile_ms(values, 0.99):.0f}"
        for index, values in sorted(windows.items())
    )


def summary_row(name: str, phase: Summary) -> tuple[str, ...]:
    statuses = dict(sorted(phase.statuses.items()))
    return (
        name,
        str(phase.responses),
        json.dumps(statuses),
        str(phase.errors.total()),
        f"{phase.percentile_ms(0.50):.1f}",
        f"{phase.percentile_ms(0.99):.1f}",
    )


async def attacked(args: argparse.Namespace, server: Server, load: Load) -> tuple[float, str]:
    """The victims' load for ``--seconds`` alone, then as long again beside the attacker: when
    the attack began, and the attacker's report."""
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.attack", "--attacker", server.base,
        "--seconds", str(args.seconds), "--attacks", args.attacks,
        *(["--attack-rate", str(args.attack_rate)] if args.attack_rate else []),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    if attacker.stdout is None:
        raise RuntimeError("no pipe from the attacker")
    # its set-up (a big import of its own) happens before any victim call
    if (await attacker.stdout.readline()).strip() != b"ready":
        raise RuntimeError("the attacker did not get ready")
    load.start()
    await asyncio.sleep(args.seconds)
    attack_started = time.monotonic()
    output, _ = await attacker.communicate(b"go\n")
    await load.stop()
    lines = output.splitlines()
    return attack_started, lines[-1].decode() if lines else ""


def check_victims(base: str, victims: list[Victim]) -> list[str]:
    """Each victim's usage against the answers it got; what failed."""
    failures = []
    for victim in victims:
        try:
            usage = read_usage(base, victim.id, victim.key)
        except RuntimeError as exc:
            print(f"victim {victim.id}: {exc}")
            failures.append(f"usage of {victim.id} unreadable")
            continue
        exact = usage["api_calls"] == victim.ok
        print(
            f"victim {victim.id}: 2xx {victim.ok}, 429 {victim.refused},"
            f" usage api_calls {usage['api_calls']}"
            f" rejected {usage['rejected_calls']} {'exact' if exact else 'NOT EXACT'}"
        )
        if not exact:
            failures.append(f"usage of {victim.id} not exact")
    return failures


def run(args: argparse.Namespace) -> int:
    failures: list[str] = []
    with scratch_stores("soak", REDIS_URL) as (database_url, prefix, tmp):
        plans = tmp / "plans.json"
        plans.write_text(json.dumps(PLANS))
        server = Server(
            "--workers", "2", "--database-url", database_url, "--redis-url", REDIS_URL,
            "--redis-key-prefix", prefix, "--plans", str(plans),
            log=tmp / "serve.log",
        )  # fmt: skip
        try:
            server.wait_ready()
            victims = [
                Victim(*register(server.base, f"Victim {n}", "professional", f"v{n}@v.test"))
                for n in range(VICTIMS)
            ]
            load = victims_load(server.base, victims, args.rate)
            attack_started, report = asyncio.run(attacked(args, server, load))
            phases = {
                "baseline": (load.started_at, load.summary(end=attack_started)),
                "attack": (attack_started, load.summary(start=attack_started)),
            }
            rows = [summary_row(name, phase) for name, (_, phase) in phases.items()]
            print(text_table(("victims", "calls", "statuses", "errors", "p50 ms", "p99 ms"), rows))
            for name, (start, phase) in phases.items():
                print(f"p99 ms every 5 s, {name}: {timeline(phase, start)}")
            print("attacker's answers:")
            for attack, outcomes in (json.loads(report) if report.strip() else {}).items():
                print(f"  {attack:16} {outcomes}")
            for name, (_, phase) in phases.items():
                fives = sum(n for s, n in phase.statuses.items() if s >= 500)
                if fives or phase.errors:
                    failures.append(f"{name}: {fives} 5xx, connection errors {dict(phase.errors)}")
            base_p99 = phases["baseline"][1].percentile_ms(0.99)
            attack_p99 = phases["attack"][1].percentile_ms(0.99)
            print(f"p99 under attack / baseline: {attack_p99 / base_p99:.2f}")
            if attack_p99 > 2 * base_p99:
                failures.append(f"p99 {attack_p99:.1f} ms > 2 x {base_p99:.1f} ms")
            time.sleep(3)  # two flush intervals: every worker's tallies reach Redis
            failures += check_victims(server.base, victims)
        finally:
            log = server.stop()
            if args.keep_log:
                shutil.copyfile(server.log, args.keep_log)
            found = [line for line in log_problems(log) if "Traceback" in line]
            if found:
                failures.append(f"{len(found)} tracebacks in the server log")
                print("server log, last lines:\n" + "\n".join(log.splitlines()[-60:]))
    return verdict(
        failures, "victims saw no 5xx, their usage is exact, p99 within 2x of the baseline"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=20.0, help="calls a second per victim")
    parser.add_argument(
        "--attacks",
        default="",
        help="only these attacks, comma-separated: imports, exports, stalled-imports, signup,"
        " keys, webhooks, input, overage (default: all at once); or cpu, the control: an"
        " attacker that sends nothing and keeps one core busy",
    )
    parser.add_argument(
        "--attack-rate",
        type=float,
        default=None,
        help="requests a second for each attack's loop (default: as fast as answers come)",
    )
    parser.add_argument("--keep-log", metavar="FILE", help="copy the server's log there")
    parser.add_argument("--attacker", metavar="BASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = frozenset(name.strip() for name in args.attacks.split(",") if name.strip())
    if args.attacker:
        return attacker_main(args.attacker, args.seconds, only, args.attack_rate)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
