"""One hostile tenant against five steady ones: ``serve --workers 2`` on PostgreSQL + Redis.

Not run in CI. ``.venv/bin/python benchmarks/attack.py [--seconds 30] [--rate 20]``

It starts the CLI server with two workers (a throw-away ``tg_soak_*`` database, a private Redis
prefix in db 11), registers five victim tenants on the professional plan and runs their steady
traffic from 127.0.0.1: each victim calls ``GET /api/v1/projects`` ``--rate`` times a second on
two keep-alive connections, paced (a request leaves on its schedule, not when the last answer
came), so a slower server shows as latency, not as fewer calls. After ``--seconds`` of this
alone, an attacker process starts, from another address (127.0.0.2), and does everything the
security review found at once for another ``--seconds``:

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
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import HOST, http_json, text_table  # noqa: E402
from benchmarks.soak import (  # noqa: E402
    REDIS_URL,
    Pinning,
    ProtocolError,
    Server,
    log_problems,
    percentile_ms,
    read_response,
    resources,
)
from tenant_gateway.keys import generate_api_key  # noqa: E402

ADMIN = "/api/v1/tenants"
PROJECTS = "/api/v1/projects"
VICTIMS = 5
ATTACKER_ADDRESS = "127.0.0.2"
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
class Phase:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Victim:
    id: str
    key: str
    ok: int = 0
    refused: int = 0


class Victims:
    """Paced calls of every victim; each answer is kept under the phase it was sent in."""

    def __init__(self, port: int, victims: list[Victim], rate: float) -> None:
        self.port, self.victims, self.rate = port, victims, rate
        self.phases = {"baseline": Phase(), "attack": Phase()}
        self.phase = "baseline"
        self._stopping = asyncio.Event()

    async def _connection(self, victim: Victim, offset: float) -> None:
        interval = 2 / self.rate  # two connections per victim
        request = (
            f"GET {PROJECTS} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Authorization: Bearer {victim.key}\r\n\r\n"
        ).encode()
        reader = writer = None
        due = time.monotonic() + offset
        try:
            while not self._stopping.is_set():
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += interval
                phase = self.phases[self.phase]
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(HOST, self.port)
                sent = time.perf_counter()
                try:
                    async with asyncio.timeout(30):
                        writer.write(request)
                        status, _, keep_alive = await read_response(reader)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                    phase.errors[type(exc).__name__] += 1
                    writer.close()
                    reader = writer = None
                    continue
                phase.latencies.append(time.perf_counter() - sent)
                phase.statuses[status] += 1
                if 200 <= status < 300:
                    victim.ok += 1
                elif status == 429:
                    victim.refused += 1
                if not keep_alive:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        interval = 1 / self.rate
        await asyncio.gather(
            *(
                self._connection(victim, (index * 2 + n) * interval / (2 * len(self.victims)))
                for index, victim in enumerate(self.victims)
                for n in range(2)
            )
        )


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
    def __init__(self, base: str, port: int, deadline: float) -> None:
        self.base, self.port, self.deadline = base, port, deadline
        self.outcomes: dict[str, Counter[str]] = {}
        transport = httpx.AsyncHTTPTransport(local_address=ATTACKER_ADDRESS)
        self.http = httpx.AsyncClient(base_url=base, transport=transport, timeout=30)
        self.tenant: dict[str, Any] = {}

    def note(self, attack: str, outcome: str) -> None:
        self.outcomes.setdefault(attack, Counter())[outcome] += 1

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenant['api_key']}"}

    async def call(self, attack: str, method: str, path: str, **kwargs: Any) -> None:
        try:
            response = await self.http.request(method, path, **kwargs)
            self.note(attack, str(response.status_code))
        except httpx.HTTPError as exc:
            self.note(attack, type(exc).__name__)

    async def setup(self) -> None:
        answer = await self.http.post(
            f"{ADMIN}/register",
            json={"name": "Mallory", "plan": "metered", "admin_email": "m@mallory.test"},
        )
        answer.raise_for_status()
        self.tenant = answer.json()
        # Enough application rows that an export outgrows the sockets' buffers.
        projects = [{"id": f"p{n}", "name": "x" * 200} for n in range(20_000)]
        await self.call(
            "setup import",
            "POST",
            f"{ADMIN}/{self.tenant['id']}/import",
            content=export_stream({"projects": projects}),
            headers=self.headers(),
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
                await self.call(
                    "poisoned import",
                    "POST",
                    f"{ADMIN}/{tid}/import",
                    content=export_stream(stream),
                    headers=self.headers(),
                )
                await self.call("poisoned import", "GET", PROJECTS, headers=self.headers())

    async def _stalled(self, attack: str, request: bytes) -> None:
        """One connection that sends ``request`` and then neither reads nor writes; opened
        again whenever the server closes it (seen in the kernel's TCP state, not by reading)."""
        while self.running:
            try:
                _, writer = await asyncio.open_connection(
                    HOST, self.port, local_addr=(ATTACKER_ADDRESS, 0)
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
                await self.call(
                    "webhook SSRF",
                    "PUT",
                    f"{ADMIN}/{self.tenant['id']}/webhook",
                    json={"url": url},
                    headers=self.headers(),
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
                await self.call("bad input", "GET", path, headers=self.headers())
            twice = [("Authorization", f"Bearer {key}"), ("Authorization", "Bearer tk_other")]
            await self.call("bad input", "GET", PROJECTS, headers=twice)
            await self.call("bad input", "FOO+1", PROJECTS, headers=self.headers())

    async def dodge_overage(self) -> None:
        tid = self.tenant["id"]
        while self.running:
            for _ in range(50):
                await self.call("overage dodge", "GET", PROJECTS, headers=self.headers())
            for plan in ("free", "metered"):
                await self.call(
                    "overage dodge",
                    "PUT",
                    f"{ADMIN}/{tid}/plan",
                    json={"plan": plan},
                    headers=self.headers(),
                )

    async def run(self) -> dict[str, dict[str, int]]:
        await self.setup()
        await asyncio.gather(
            self.poisoned_imports(),
            self.stalled_exports(12),
            self.stalled_imports(12),
            self.signup_flood(),
            self.fake_keys(),
            self.webhook_ssrf(),
            self.bad_input(),
            self.dodge_overage(),
        )
        await self.http.aclose()
        return {attack: dict(sorted(c.items())) for attack, c in sorted(self.outcomes.items())}


def attacker_main(base: str, seconds: float) -> int:
    port = int(base.rsplit(":", 1)[1])
    attacker = Attacker(base, port, time.monotonic() + seconds)
    print(json.dumps(asyncio.run(attacker.run())), flush=True)
    return 0


# -- the run --------------------------------------------------------------------------------


def summary_row(name: str, phase: Phase) -> tuple[str, ...]:
    statuses = dict(sorted(phase.statuses.items()))
    return (
        name,
        str(sum(phase.statuses.values())),
        json.dumps(statuses),
        str(sum(phase.errors.values())),
        f"{percentile_ms(phase.latencies, 0.50):.1f}",
        f"{percentile_ms(phase.latencies, 0.99):.1f}",
    )


def run(args: argparse.Namespace) -> int:
    token = secrets.token_hex(4)
    failures: list[str] = []
    with resources(token) as (database_url, prefix, tmp):
        plans = tmp / "plans.json"
        plans.write_text(json.dumps(PLANS))
        serve_args = [
            "--workers", "2", "--database-url", database_url, "--redis-url", REDIS_URL,
            "--redis-key-prefix", prefix, "--plans", str(plans),
        ]  # fmt: skip
        server = Server(serve_args, tmp / "serve.log", Pinning(None, None))
        try:
            server.wait_ready()
            victims = []
            for n in range(VICTIMS):
                answer = http_json(
                    "POST",
                    f"{server.base}{ADMIN}/register",
                    {"name": f"Victim {n}", "plan": "professional", "admin_email": f"v{n}@v.test"},
                )
                victims.append(Victim(str(answer["id"]), str(answer["api_key"])))
            load = Victims(server.port, victims, args.rate)
            attack_report: dict[str, Any] = {}

            async def drive() -> None:
                traffic = asyncio.create_task(load.run())
                await asyncio.sleep(args.seconds)
                load.phase = "attack"
                attacker = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--attacker", server.base,
                    "--seconds", str(args.seconds),
                    stdout=subprocess.PIPE,
                )  # fmt: skip
                output, _ = await attacker.communicate()
                load.stop()
                await traffic
                if output.strip():
                    attack_report.update(json.loads(output.splitlines()[-1]))

            asyncio.run(drive())
            rows = [summary_row(name, phase) for name, phase in load.phases.items()]
            print(text_table(("victims", "calls", "statuses", "errors", "p50 ms", "p99 ms"), rows))
            print("attacker's answers:")
            for attack, outcomes in attack_report.items():
                print(f"  {attack:16} {outcomes}")
            for name, phase in load.phases.items():
                fives = sum(n for s, n in phase.statuses.items() if s >= 500)
                if fives or phase.errors:
                    failures.append(f"{name}: {fives} 5xx, connection errors {dict(phase.errors)}")
            base_p99 = percentile_ms(load.phases["baseline"].latencies, 0.99)
            attack_p99 = percentile_ms(load.phases["attack"].latencies, 0.99)
            print(f"p99 under attack / baseline: {attack_p99 / base_p99:.2f}")
            if attack_p99 > 2 * base_p99:
                failures.append(f"p99 {attack_p99:.1f} ms > 2 x {base_p99:.1f} ms")
            time.sleep(3)  # two flush intervals: every worker's tallies reach Redis
            for victim in victims:
                try:
                    usage = http_json(
                        "GET", f"{server.base}{ADMIN}/{victim.id}/usage", key=victim.key
                    )
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
        finally:
            server.stop()
            found = [line for line in log_problems(server) if "Traceback" in line]
            if found:
                failures.append(f"{len(found)} tracebacks in the server log")
                print("server log, last lines:\n" + server.tail(60))
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS: victims saw no 5xx, their usage is exact, p99 within 2x of the baseline")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=20.0, help="calls a second per victim")
    parser.add_argument("--attacker", metavar="BASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attacker:
        return attacker_main(args.attacker, args.seconds)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
