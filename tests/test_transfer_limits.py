"""Exports and imports on bounded resources (issue 17, finding 4; review #1, #2, #9, #13).

A transfer whose client stalls must not take what other tenants need: transfers run one per
tenant and ``transfer_concurrency`` per process on a pool of their own, a client idle for
``transfer_idle_timeout`` is cut, so is one slower than ``transfer_min_rate`` or still going
after ``transfer_max_duration``, and a transfer that keeps moving is not cut by the admin
deadline. Stalled clients are raw sockets that send a request and then neither read nor send;
slow ones move the gateway's injected clock instead of sleeping. An import holding its
tenant's row costs other tenants nothing either: the tenant's own admin calls give up on the
lock after a second, and at most ``admin_tenant_concurrency`` of them run at once.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.types import Message

from benchmarks.launch import Server, free_port, run_cli
from tenant_gateway import ConfigurationError, TenantGateway
from tenant_gateway.demo import PROJECTS_SCHEMA, build_demo_app, create_projects_table
from tenant_gateway.exceptions import StoreBusy
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.isolation import is_isolated, isolate_table

from .conftest import (
    JWT_SECRET,
    PG_ADMIN_URL,
    FakeClock,
    _url_with_database,
    auth,
    operator_headers,
)
from .helpers import ndjson, prepare_app_tables, register_as

T = "/api/v1/tenants"
TRANSFER_APPLICATION_NAME = "tenant_gateway.transfer"  # the transfers' pool's connections
HANG_GUARD = 60.0  # seconds: only ever reached when something hangs, never a speed bound
HEADER = {"format": "tenant-gateway-export", "version": 1}


def _project(n: int) -> dict[str, Any]:
    row = {"id": f"p{n}", "name": f"project {n}", "created_at": "2026-01-01T00:00:00Z"}
    return {"table": "projects", "row": row}


def import_body(rows: int) -> list[dict[str, Any]]:
    return [{**HEADER, "tables": [{"name": "projects", "rows": rows}]}] + [
        _project(n) for n in range(rows)
    ]


async def fill(database_url: str, tenant_id: str, rows: int) -> None:
    """Rows enough that an export outgrows every socket buffer (so a client that does not
    read makes the server's ``send`` wait)."""
    database = Database(database_url)
    await database.connect()
    try:
        async with database.tenant_transaction(tenant_id) as conn:
            await conn.execute(
                "INSERT INTO projects (tenant_id, id, name)"
                " SELECT $1, 'p' || n, repeat('x', 500) FROM generate_series(1, $2::int) n",
                tenant_id,
                rows,
            )
    finally:
        await database.close()


async def project_count(database_url: str, tenant_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM projects WHERE tenant_id = $1", tenant_id
        )
    finally:
        await conn.close()
    return count


async def transactions_held(database_url: str) -> int:
    """Connections to the test database sitting in an open transaction (a stalled transfer)."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = $1 AND state = 'idle in transaction'",
            database_url.rsplit("/", 1)[1],
        )
    finally:
        await conn.close()
    return count


async def transfer_connections(database_url: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            database_url.rsplit("/", 1)[1],
            TRANSFER_APPLICATION_NAME,
        )
    finally:
        await conn.close()
    return count


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for a condition (a state of the server), not for a time; fail only on a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"still not the case after {HANG_GUARD} s: {what}")
        await asyncio.sleep(0.05)


def stalled_export(server: Server, tenant: dict[str, Any]) -> socket.socket:
    """Asks for an export and never reads (a tiny receive window: the server must wait)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET {T}/{tenant['id']}/export HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        f"Authorization: Bearer {tenant['api_key']}\r\n\r\n".encode()
    )
    return sock


def stalled_import(server: Server, tenant: dict[str, Any]) -> socket.socket:
    """Sends the headers, the NDJSON header line, one row and half of the next, then stops."""
    sent = ndjson(import_body(3))
    sent = sent[: sent.index(b"\n", sent.index(b"\n") + 1) + 20]
    sock = socket.socket()
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"POST {T}/{tenant['id']}/import HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {tenant['api_key']}\r\n"
        f"Content-Type: application/x-ndjson\r\nContent-Length: {len(sent) + 10_000}\r\n\r\n"
        .encode() + sent
    )  # fmt: skip
    return sock


def answered(sock: socket.socket) -> bool:
    """Has the server sent something (or closed) on this connection? Never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a hang guard on each read)."""
    sock.settimeout(HANG_GUARD)
    received = bytearray()
    while chunk := sock.recv(1 << 16):
        received += chunk
    return bytes(received)


@pytest.mark.slow
async def test_stalled_transfers_leave_the_pool_to_everyone_else(
    postgres_url: str, real_stores: tuple[str, ...]
) -> None:
    """Eleven exports that are never read and eleven imports that stop sending, held open far
    longer than any check here takes (idle timeout: 10 minutes): every other tenant's calls,
    sign-up, the admin API and /readyz keep answering, and the stalled transfers hold at most
    ``transfer_concurrency`` (2) connections, none of the request path's pool."""
    server = Server(*real_stores, "--transfer-idle-timeout", "600")
    stalled: list[socket.socket] = []
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base, timeout=HANG_GUARD) as http:
            exporter = await register_as(http, "admin@exporter.io", plan="enterprise")
            importer = await register_as(http, "admin@importer.io", plan="enterprise")
            bystander = await register_as(http, "admin@bystander.io", plan="enterprise")
            await fill(postgres_url, exporter["id"], 30_000)  # ~16 MB of NDJSON
            for _ in range(11):
                stalled.append(stalled_export(server, exporter))
                stalled.append(stalled_import(server, importer))

            async def held() -> bool:
                return await transactions_held(postgres_url) >= 2

            await eventually(held, "the stalled transfers hold their transactions")

            async def refused() -> bool:
                # All but the two holders are answered at once (429 or 503): until then they
                # count among their tenant's admin requests in progress (4 at most).
                return sum(map(answered, stalled)) >= len(stalled) - 2

            await eventually(refused, "the transfers beyond the limits are refused")

            for round_ in range(3):
                calls = [
                    http.post(
                        f"{T}/register",
                        json={"name": f"n{round_}", "admin_email": f"a@new{round_}.io"},
                    ),
                    http.get("/readyz"),
                    http.get(f"{T}/{bystander['id']}", headers=auth(bystander)),
                    http.get(f"{T}/{bystander['id']}/usage", headers=auth(bystander)),
                    http.get(f"{T}/{exporter['id']}/users", headers=auth(exporter)),
                    http.post("/api/v1/projects", json={"name": "x"}, headers=auth(bystander)),
                    *[http.get("/api/v1/projects", headers=auth(bystander)) for _ in range(12)],
                ]
                answers = await asyncio.gather(*calls)
                statuses = [answer.status_code for answer in answers]
                assert all(status < 300 for status in statuses), [
                    (a.request.url.path, a.status_code, a.text[:200])
                    for a in answers
                    if a.status_code >= 300
                ]

            # The stalled ones took their tenant's slot, and between them the process's two: the
            # limit holds, and a bystander waits until they are cut (idle here after 600 s; see
            # test_slow_holders_of_every_slot_are_cut_and_others_then_transfer for the pace).
            again = await http.get(f"{T}/{exporter['id']}/export", headers=auth(exporter))
            assert again.status_code == 429, again.text
            assert again.json()["code"] == "transfer_in_progress"
            assert int(again.headers["Retry-After"]) >= 1
            body = ndjson(import_body(1))
            again = await http.post(
                f"{T}/{importer['id']}/import", content=body, headers=auth(importer)
            )
            assert again.status_code == 429 and again.json()["code"] == "transfer_in_progress"
            busy = await http.get(f"{T}/{bystander['id']}/export", headers=auth(bystander))
            assert busy.status_code == 503, busy.text
            assert busy.json()["code"] == "transfers_busy" and "Retry-After" in busy.headers
            assert await transfer_connections(postgres_url) <= 2
            assert await project_count(postgres_url, importer["id"]) == 0
    finally:
        for sock in stalled:
            sock.close()
        log = server.stop()
    assert "Traceback" not in log, log


@pytest.mark.slow
async def test_stalled_transfers_are_cut_after_the_idle_timeout(
    postgres_url: str, real_stores: tuple[str, ...]
) -> None:
    """With a 1 s idle timeout: the import that stopped sending is answered 408 and wrote
    nothing; the export that is never read is cut (its client gets a truncated stream, then
    the end of the connection); both give their slot, lock and connection back."""
    server = Server(*real_stores, "--transfer-idle-timeout", "1")
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base, timeout=HANG_GUARD) as http:
            exporter = await register_as(http, "admin@cut-exporter.io", plan="enterprise")
            importer = await register_as(http, "admin@cut-importer.io", plan="enterprise")
            await fill(postgres_url, exporter["id"], 30_000)
            export_socket = stalled_export(server, exporter)
            import_socket = stalled_import(server, importer)
            try:
                answer = await asyncio.to_thread(read_to_end, import_socket)
                status_line, _, rest = answer.partition(b"\r\n")
                assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
                problem = json.loads(rest.partition(b"\r\n\r\n")[2])
                assert problem["code"] == "request_timeout"
                assert await project_count(postgres_url, importer["id"]) == 0

                # The exporter's slot comes back once its stalled stream is cut: until then
                # a new export of the tenant is refused (429), never made to wait.
                async def export_slot_free() -> bool:
                    response = await http.get(
                        f"{T}/{exporter['id']}/export", headers=auth(exporter)
                    )
                    if response.status_code == 429:
                        return False
                    assert response.status_code == 200, response.text
                    lines = response.text.splitlines()
                    rows = sum(t["rows"] for t in json.loads(lines[0])["tables"])
                    assert len(lines) == rows + 1  # the whole export, this time
                    return True

                await eventually(export_slot_free, "the stalled export was cut")
                stalled_copy = await asyncio.to_thread(read_to_end, export_socket)
                assert stalled_copy.startswith(b"HTTP/1.1 200")
                assert stalled_copy.count(b"\n") < 30_000  # cut short: it never completed
            finally:
                export_socket.close()
                import_socket.close()

            async def released() -> bool:
                return await transactions_held(postgres_url) == 0

            await eventually(released, "no transaction left open by a transfer")
            retried = await http.post(
                f"{T}/{importer['id']}/import",
                content=ndjson(import_body(3)),
                headers=auth(importer),
            )
            assert retried.status_code == 200, retried.text
            assert await project_count(postgres_url, importer["id"]) == 3
            assert (await http.get("/readyz")).status_code == 200
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


def trickled_import(server: Server, tenant: dict[str, Any], every: float) -> bytes:
    """Sends an import's headers, then its body a byte at a time, ``every`` seconds apart (never
    as long as the idle timeout), until the server answers; returns the answer."""
    body = ndjson(import_body(3))
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(
            f"POST {T}/{tenant['id']}/import HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {tenant['api_key']}\r\n"
            f"Content-Type: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode()
        )  # fmt: skip
        for n in range(len(body)):
            answered, _, _ = select.select([sock], [], [], every)
            if answered:
                break
            sock.sendall(body[n : n + 1])
        return read_to_end(sock)
    finally:
        sock.close()


@pytest.mark.slow
async def test_a_trickling_client_is_cut_by_the_server(
    postgres_url: str, real_stores: tuple[str, ...]
) -> None:
    """Review #1, through uvicorn: an import sent a byte every 0.25 s never waits as long as
    the idle timeout (1 s here) but is cut by its pace (or, on a machine slow enough to leave a
    gap of 1 s, by the idle timeout): 408, nothing written, the slot free again."""
    server = Server(*real_stores, "--transfer-idle-timeout", "1")
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base, timeout=HANG_GUARD) as http:
            tenant = await register_as(http, "admin@trickler.io", plan="enterprise")
            answer = await asyncio.to_thread(trickled_import, server, tenant, 0.25)
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
            assert json.loads(rest.partition(b"\r\n\r\n")[2])["code"] == "request_timeout"
            assert await project_count(postgres_url, tenant["id"]) == 0
            retried = await http.post(
                f"{T}/{tenant['id']}/import", content=ndjson(import_body(3)), headers=auth(tenant)
            )
            assert retried.status_code == 200, retried.text
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


# -- in process ---------------------------------------------------------------------------------

Started = tuple[TenantGateway, httpx.AsyncClient]


@pytest.fixture
async def gateways(
    postgres_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    """``await make(**settings)`` → a started gateway (real stores) and a client on it."""
    opened: list[tuple[TenantGateway, httpx.AsyncClient]] = []

    async def make(**settings: Any) -> Started:
        gateway = TenantGateway(
            build_demo_app(postgres_url),
            database_url=postgres_url,
            redis_url=redis_url,
            redis_key_prefix=redis_prefix,
            admin_jwt_secret=JWT_SECRET,
            **settings,
        )
        await gateway.startup()
        await prepare_app_tables(postgres_url)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://t", timeout=HANG_GUARD
        )
        opened.append((gateway, client))
        return gateway, client

    yield make
    for gateway, client in opened:
        await client.aclose()
        await gateway.shutdown()


class HeldImport:
    """An import whose body stops after the header and a row until ``finish`` is called."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tenant: dict[str, Any],
        rows: int = 3,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.waiting = asyncio.Event()  # the server has read the first part
        self.go_on = asyncio.Event()
        lines = (body or ndjson(import_body(rows))).splitlines(keepends=True)
        self._first, self._rest = b"".join(lines[:2]), b"".join(lines[2:])
        self.response = asyncio.ensure_future(
            http.post(
                f"{T}/{tenant['id']}/import",
                content=self._body(),
                headers=headers or auth(tenant),
            )
        )

    async def _body(self) -> AsyncIterator[bytes]:
        yield self._first
        self.waiting.set()  # asked for more: the first part was taken, the import is under way
        await self.go_on.wait()
        yield self._rest

    async def started(self) -> None:
        await asyncio.wait_for(self.waiting.wait(), HANG_GUARD)

    async def finish(self) -> httpx.Response:
        self.go_on.set()
        return await asyncio.wait_for(self.response, HANG_GUARD)


async def test_one_transfer_per_tenant_and_two_per_process(
    gateways: Callable[..., Awaitable[Started]],
) -> None:
    _, http = await gateways()
    first, second, third = [
        await register_as(http, f"admin@limit{n}.io", plan="enterprise") for n in range(3)
    ]
    held = HeldImport(http, first)
    await held.started()
    for method, path in (("GET", "export"), ("POST", "import")):
        refused = await http.request(
            method,
            f"{T}/{first['id']}/{path}",
            content=ndjson(import_body(1)) if method == "POST" else None,
            headers=auth(first),
        )
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "transfer_in_progress"
        assert refused.headers["Retry-After"] == "10"  # the default idle timeout
    other = HeldImport(http, second)  # the process's second slot
    await other.started()
    busy = await http.get(f"{T}/{third['id']}/export", headers=operator_headers())
    assert busy.status_code == 503 and busy.json()["code"] == "transfers_busy"
    assert busy.headers["Retry-After"] == "10"
    assert (await held.finish()).status_code == 200
    assert (await other.finish()).status_code == 200
    for tenant in (first, second, third):  # every slot came back
        assert (await http.get(f"{T}/{tenant['id']}/export", headers=auth(tenant))).is_success


async def test_one_transfer_per_tenant_across_processes(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """Two gateways on one database (two worker processes), and the export command: the
    tenant's transfer lock lives in PostgreSQL, so they refuse too."""
    (_, one), (_, two) = await gateways(), await gateways()
    tenant = await register_as(one, "admin@two-workers.io", plan="enterprise")
    held = HeldImport(one, tenant)
    await held.started()
    refused = await two.get(f"{T}/{tenant['id']}/export", headers=auth(tenant))
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "transfer_in_progress"
    refused = await two.post(
        f"{T}/{tenant['id']}/import", content=ndjson(import_body(1)), headers=auth(tenant)
    )
    assert refused.status_code == 429 and refused.json()["code"] == "transfer_in_progress"
    command = await asyncio.to_thread(
        run_cli, "export", "--tenant", tenant["id"], "--database-url", postgres_url
    )
    assert command.returncode == 2 and "in progress" in command.stderr, command.stderr
    assert (await held.finish()).status_code == 200
    assert (await two.get(f"{T}/{tenant['id']}/export", headers=auth(tenant))).is_success


async def test_an_import_that_keeps_moving_outlives_the_admin_deadline(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """The import pauses until a request started after it has been cut by the admin deadline
    (so it has run longer than ``admin_timeout`` without a wait over the idle timeout), then
    completes: 200, every row."""
    _, http = await gateways(admin_timeout=2.0, transfer_idle_timeout=HANG_GUARD)
    tenant = await register_as(http, "admin@long-import.io", plan="enterprise")
    held = HeldImport(http, tenant, rows=50)
    await held.started()
    never = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:  # a body that never ends: the deadline's case
        yield b'{"name": '
        await never.wait()

    cut = await http.patch(f"{T}/{tenant['id']}", content=endless(), headers=auth(tenant))
    assert cut.status_code == 503 and cut.json()["code"] == "service_unavailable"
    done = await held.finish()
    assert done.status_code == 200, done.text
    assert done.json()["imported"] == {"projects": 50}
    assert await project_count(postgres_url, tenant["id"]) == 50


async def test_an_import_that_stops_sending_is_cut_and_writes_nothing(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    _, http = await gateways(transfer_idle_timeout=0.5)
    tenant = await register_as(http, "admin@idle-import.io", plan="enterprise")
    held = HeldImport(http, tenant)
    response = await asyncio.wait_for(held.response, HANG_GUARD)  # never told to go on
    assert response.status_code == 408, response.text
    assert response.json()["code"] == "request_timeout"
    assert await project_count(postgres_url, tenant["id"]) == 0
    retried = await http.post(
        f"{T}/{tenant['id']}/import", content=ndjson(import_body(3)), headers=auth(tenant)
    )
    assert retried.status_code == 200, retried.text
    assert await project_count(postgres_url, tenant["id"]) == 3


def export_scope(tenant: dict[str, Any]) -> dict[str, Any]:
    """An ASGI request for the tenant's export, to drive the gateway's ``send`` by hand."""
    path = f"{T}/{tenant['id']}/export"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t"), (b"authorization", f"Bearer {tenant['api_key']}".encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("t", 80),
    }


async def never_disconnects() -> Message:
    """An ASGI ``receive`` for a client that is there, just not sending anything more."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_an_export_whose_client_stops_reading_is_cut(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """Driven as ASGI: ``send`` blocks for good after the first body chunk, as a server's does
    when its client reads nothing. The gateway returns, the transaction is gone, and the
    tenant can export again."""
    gateway, http = await gateways(transfer_idle_timeout=0.5)
    tenant = await register_as(http, "admin@idle-export.io", plan="enterprise")
    await fill(postgres_url, tenant["id"], 100)
    sent: list[Message] = []
    stuck = asyncio.Event()

    async def receive() -> Message:
        await asyncio.Event().wait()  # no disconnect: the client is there, just not reading
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) > 1:
            stuck.set()
            await asyncio.Event().wait()

    await asyncio.wait_for(gateway(export_scope(tenant), receive, send), HANG_GUARD)
    assert stuck.is_set() and sent[0]["status"] == 200
    assert not any(m.get("more_body") is False for m in sent)  # never completed

    async def released() -> bool:
        return await transactions_held(postgres_url) == 0

    await eventually(released, "the export's transaction was ended")
    again = await http.get(f"{T}/{tenant['id']}/export", headers=auth(tenant))
    assert again.status_code == 200 and len(again.text.splitlines()) > 100


@pytest.mark.slow
async def test_transfer_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        TenantGateway(build_demo_app(None), transfer_concurrency=0)
    with pytest.raises(ConfigurationError):
        TenantGateway(build_demo_app(None), transfer_idle_timeout=0.0)
    for settings in (
        {"transfer_min_rate": -1},
        {"transfer_max_duration": 0.0},
        {"admin_tenant_concurrency": 0},
    ):
        with pytest.raises(ConfigurationError):
            TenantGateway(build_demo_app(None), **settings)
    result = run_cli("serve", "--port", str(free_port()), "--transfer-idle-timeout", "0")
    assert result.returncode == 2 and "--transfer-idle-timeout" in result.stderr
    result = run_cli("serve", "--port", str(free_port()), "--transfer-min-rate", "-1")
    assert result.returncode == 2 and "--transfer-min-rate" in result.stderr


# -- slow clients (review #1 and #13) ------------------------------------------------------------

STEP = 9.0
"""Seconds between two pieces of a slow client, on the gateway's clock: always less than the
idle timeout (10 s), so only the pace can catch it."""


class TrickleImport:
    """An import whose client sends ``step`` bytes at a time, each ``STEP`` seconds after the
    last on the gateway's (injected) clock. With ``hold`` it stops after its first piece (the
    import under way, its slot claimed) until ``answer`` is awaited."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tenant: dict[str, Any],
        clock: FakeClock,
        body: bytes,
        *,
        step: int = 1,
        hold: bool = False,
    ) -> None:
        self.clock = clock
        self.started = asyncio.Event()
        self._go_on = asyncio.Event()
        if not hold:
            self._go_on.set()
        self.pieces = [body[n : n + step] for n in range(0, len(body), step)]
        self.sent = 0
        self.response = asyncio.ensure_future(
            http.post(f"{T}/{tenant['id']}/import", content=self._body(), headers=auth(tenant))
        )

    async def _body(self) -> AsyncIterator[bytes]:
        for n, piece in enumerate(self.pieces):
            if n == 1:
                self.started.set()
                await self._go_on.wait()
            if n:
                self.clock.advance(STEP)
            self.sent += 1
            yield piece

    async def answer(self) -> httpx.Response:
        self._go_on.set()
        return await asyncio.wait_for(self.response, HANG_GUARD)


async def test_an_import_that_trickles_is_cut(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """Review #1: a byte every 9 s never waits as long as the idle timeout, so it used to hold
    its slot, a connection and a transaction for as long as it liked. It is far under the
    minimum pace (1 KiB/s over each 10 s window): cut when its first window is over, 408,
    nothing written, and the slot is free again."""
    clock = FakeClock()
    _, http = await gateways(clock=clock)
    tenant = await register_as(http, "admin@trickle-import.io", plan="enterprise")
    trickle = TrickleImport(http, tenant, clock, ndjson(import_body(3)))
    response = await trickle.answer()
    assert response.status_code == 408, response.text
    assert response.json()["code"] == "request_timeout"
    assert "under the minimum of 1024" in response.json()["detail"]
    assert trickle.sent < len(trickle.pieces)  # cut, not finished
    assert await project_count(postgres_url, tenant["id"]) == 0
    retried = await http.post(
        f"{T}/{tenant['id']}/import", content=ndjson(import_body(3)), headers=auth(tenant)
    )
    assert retried.status_code == 200, retried.text
    assert await project_count(postgres_url, tenant["id"]) == 3


async def test_an_export_read_too_slowly_is_cut(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """Review #1: a client that takes 9 s to take each chunk of an export (never the idle
    timeout), a few hundred bytes a second, is cut once its first window is over: the stream
    never completes, the transaction ends, and the tenant can export again."""
    clock = FakeClock()
    gateway, http = await gateways(clock=clock)
    tenant = await register_as(http, "admin@slow-reader.io", plan="enterprise")
    for n in range(3):
        created = await http.post("/api/v1/projects", json={"name": f"p{n}"}, headers=auth(tenant))
        assert created.status_code == 201, created.text
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            clock.advance(STEP)  # the client took that long to read it

    await asyncio.wait_for(gateway(export_scope(tenant), never_disconnects, send), HANG_GUARD)
    assert sent[0]["status"] == 200
    assert not any(m.get("more_body") is False for m in sent)  # never completed

    async def released() -> bool:
        return await transactions_held(postgres_url) == 0

    await eventually(released, "the export's transaction was ended")
    again = await http.get(f"{T}/{tenant['id']}/export", headers=auth(tenant))
    assert again.status_code == 200, again.text
    lines = again.text.splitlines()
    assert len(lines) == sum(t["rows"] for t in json.loads(lines[0])["tables"]) + 1


async def test_transfers_end_at_their_max_duration(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """Review #1: a client that keeps any pace (no minimum here) still cannot hold a transfer
    open past ``transfer_max_duration``, in either direction."""
    clock = FakeClock()
    gateway, http = await gateways(clock=clock, transfer_min_rate=0, transfer_max_duration=60.0)
    importer = await register_as(http, "admin@long-import.io", plan="enterprise")
    trickle = TrickleImport(http, importer, clock, ndjson(import_body(50)), step=200)
    response = await trickle.answer()
    assert response.status_code == 408, response.text
    assert "longer than the 60 s" in response.json()["detail"]
    assert trickle.sent < len(trickle.pieces)
    assert await project_count(postgres_url, importer["id"]) == 0

    exporter = await register_as(http, "admin@long-export.io", plan="enterprise")
    await fill(postgres_url, exporter["id"], 1_000)  # ~0.5 MB: 8 chunks of 64 KiB
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            clock.advance(STEP)

    await asyncio.wait_for(gateway(export_scope(exporter), never_disconnects, send), HANG_GUARD)
    assert sent[0]["status"] == 200
    assert not any(m.get("more_body") is False for m in sent)
    assert len(sent) <= 2 + 60 / STEP  # cut at the deadline, not at the end


async def test_slow_holders_of_every_slot_are_cut_and_others_then_transfer(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """Review #13: two tenants' imports, a byte every 9 s, take the process's two slots. A third
    tenant meanwhile gets 503 ``transfers_busy``: the global limit stands. But the holders are
    cut by their pace, and the third tenant's export and import then go through."""
    clock = FakeClock()
    _, http = await gateways(clock=clock)
    first, second, bystander = [
        await register_as(http, f"admin@holder{n}.io", plan="enterprise") for n in range(3)
    ]
    holders = [
        TrickleImport(http, tenant, clock, ndjson(import_body(3)), hold=True)
        for tenant in (first, second)
    ]
    for holder in holders:
        await asyncio.wait_for(holder.started.wait(), HANG_GUARD)
    busy = await http.get(f"{T}/{bystander['id']}/export", headers=auth(bystander))
    assert busy.status_code == 503 and busy.json()["code"] == "transfers_busy", busy.text
    for holder in holders:
        cut = await holder.answer()
        assert cut.status_code == 408 and "under the minimum" in cut.json()["detail"], cut.text
    assert await project_count(postgres_url, first["id"]) == 0
    assert await project_count(postgres_url, second["id"]) == 0
    exported = await http.get(f"{T}/{bystander['id']}/export", headers=auth(bystander))
    assert exported.status_code == 200, exported.text
    imported = await http.post(
        f"{T}/{bystander['id']}/import", content=ndjson(import_body(3)), headers=auth(bystander)
    )
    assert imported.status_code == 200, imported.text
    assert await project_count(postgres_url, bystander["id"]) == 3


# -- the transfer lock (review #9) ----------------------------------------------------------------

CLASHING_IDS = ("tenant_clash_24910", "tenant_clash_324561")
"""Two tenant ids whose ``hashtext`` (32 bits, the lock's old key) is the same: -975053721."""


async def test_tenants_whose_ids_hash_alike_transfer_at_once(
    gateways: Callable[..., Awaitable[Started]], postgres_url: str
) -> None:
    """Review #9: keyed by ``hashtext``, two tenants whose ids hash alike shared one transfer
    lock, so one's import made the other's export 429. The key is 64 bits now."""
    _, http = await gateways()
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT hashtext($1) = hashtext($2)", *CLASHING_IDS)
        for tenant_id in CLASHING_IDS:
            await conn.execute(
                "INSERT INTO tg_tenants (id, name, plan, status, admin_email, created_at,"
                " updated_at) VALUES ($1, $1, 'enterprise', 'active', 'a@clash.io', now(), now())"
                " ON CONFLICT DO NOTHING",
                tenant_id,
            )
    finally:
        await conn.close()
    first, second = ({"id": tenant_id} for tenant_id in CLASHING_IDS)
    held = HeldImport(http, first, headers=operator_headers())
    await held.started()
    other = await http.get(f"{T}/{second['id']}/export", headers=operator_headers())
    assert other.status_code == 200, other.text
    assert (await held.finish()).status_code == 200


# -- an import holding its tenant's row (review #2) ---------------------------------------------


def users_import(rows: int) -> bytes:
    """An import of users: each row's foreign key locks the tenant's row (FOR KEY SHARE) until
    the import ends."""
    header = {**HEADER, "tables": [{"name": "tg_users", "rows": rows}]}
    users = [
        {"id": f"usr_imported{n}", "email": f"imported{n}@x.io", "role": "viewer",
         "created_at": "2026-01-01T00:00:00Z"}
        for n in range(rows)
    ]  # fmt: skip
    return ndjson([header, *({"table": "tg_users", "row": user} for user in users)])


async def test_a_row_its_import_holds_fails_the_tenants_changes_at_once(
    gateways: Callable[..., Awaitable[Started]],
) -> None:
    """Review #2: while the tenant's import holds its row, a change that must lock the row
    (PATCH, a new user) waited on it until the admin deadline, holding a connection of the
    shared pool. It now gives up after the lock timeout (1 s): 409 ``lock_timeout`` with
    ``Retry-After``, nothing changed; reads go on; after the import it goes through."""
    _, http = await gateways()
    tenant = await register_as(http, "admin@locked-row.io", plan="enterprise")
    held = HeldImport(http, tenant, body=users_import(2))
    await held.started()
    for method, path, body in (
        ("PATCH", "", {"name": "renamed"}),
        ("POST", "/users", {"email": "new@x.io"}),
    ):
        refused = await http.request(
            method, f"{T}/{tenant['id']}{path}", json=body, headers=auth(tenant)
        )
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "lock_timeout"
        assert refused.headers["Retry-After"] == "1"
    read = await http.get(f"{T}/{tenant['id']}", headers=auth(tenant))
    assert read.status_code == 200 and read.json()["name"] != "renamed"
    assert (await held.finish()).status_code == 200
    changed = await http.patch(
        f"{T}/{tenant['id']}", json={"name": "renamed"}, headers=auth(tenant)
    )
    assert changed.status_code == 200 and changed.json()["name"] == "renamed"


async def test_a_tenant_runs_at_most_four_admin_requests_at_once(
    gateways: Callable[..., Awaitable[Started]],
) -> None:
    """Review #2: whatever holds them up, one tenant's admin requests run at most
    ``admin_tenant_concurrency`` (4) at a time in a process, so they can hold at most that
    many of the shared pool's connections; the next is 429 ``rate_limited`` with
    ``Retry-After: 1``. Other tenants, operators and app calls are not counted. Here the four
    are held while they read their bodies."""
    _, http = await gateways(admin_timeout=HANG_GUARD)
    tenant = await register_as(http, "admin@four.io", plan="enterprise")
    other = await register_as(http, "admin@other.io", plan="enterprise")
    reading = [asyncio.Event() for _ in range(4)]
    release = asyncio.Event()

    async def held_body(n: int) -> AsyncIterator[bytes]:
        yield b'{"name": '
        reading[n].set()  # asked for more: admitted, and reading its body
        await release.wait()
        yield b'"renamed"}'

    held = [
        asyncio.ensure_future(
            http.patch(f"{T}/{tenant['id']}", content=held_body(n), headers=auth(tenant))
        )
        for n in range(4)
    ]
    for event in reading:
        await asyncio.wait_for(event.wait(), HANG_GUARD)
    fifth = await http.get(f"{T}/{tenant['id']}", headers=auth(tenant))
    assert fifth.status_code == 429, fifth.text
    assert fifth.json()["code"] == "rate_limited" and fifth.headers["Retry-After"] == "1"
    assert (await http.get(f"{T}/{other['id']}", headers=auth(other))).status_code == 200
    assert (await http.get(f"{T}/{tenant['id']}", headers=operator_headers())).status_code == 200
    assert (await http.get("/api/v1/projects", headers=auth(tenant))).status_code == 200
    release.set()
    for response in held:
        assert (await asyncio.wait_for(response, HANG_GUARD)).status_code == 200
    again = await http.get(f"{T}/{tenant['id']}", headers=auth(tenant))  # all counted out
    assert again.status_code == 200, again.text


async def test_a_tenant_hammering_its_own_locked_row_costs_others_nothing(
    gateways: Callable[..., Awaitable[Started]],
) -> None:
    """Review #2, its scenario (lock_pool.py): the tenant's import holds its row and it fires
    12 PATCHes at it. Each used to hold one of the shared pool's 10 connections until the
    admin deadline (503): a sign-up waited 5 s for a connection and got 503, bystanders' calls
    took 9.5 s. Now at most 4 run (429 for the rest) and each gives up on the lock (409): the
    bystanders' sign-up, admin calls and app calls all answer."""
    _, http = await gateways()
    attacker = await register_as(http, "admin@attacker.io", plan="enterprise")
    bystander = await register_as(http, "admin@bystander.io", plan="enterprise")
    held = HeldImport(http, attacker, body=users_import(2))
    await held.started()
    blockers = [
        asyncio.ensure_future(
            http.patch(f"{T}/{attacker['id']}", json={"name": f"n{n}"}, headers=auth(attacker))
        )
        for n in range(12)
    ]
    answers = await asyncio.gather(
        http.post(f"{T}/register", json={"name": "new", "admin_email": "a@newcomer.io"}),
        http.get(f"{T}/{bystander['id']}", headers=auth(bystander)),
        http.get(f"{T}/{bystander['id']}/users", headers=auth(bystander)),
        http.post("/api/v1/projects", json={"name": "x"}, headers=auth(bystander)),
        http.get("/api/v1/projects", headers=auth(bystander)),
    )
    assert all(answer.status_code < 300 for answer in answers), [
        (a.request.url.path, a.status_code, a.text[:200]) for a in answers
    ]
    statuses = {(await asyncio.wait_for(b, HANG_GUARD)).status_code for b in blockers}
    assert statuses <= {409, 429}, statuses
    assert (await held.finish()).status_code == 200


# -- DDL at start-up (review #1) ---------------------------------------------------------------


async def test_a_worker_starting_during_an_export_takes_no_table_lock(
    gateways: Callable[..., Awaitable[Started]],
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Review #1: an export's snapshot holds a share lock on every table it reads for as long
    as its client takes. A worker starting meanwhile ran the demo's migration (ALTER TABLE
    projects), which queued behind the export, and every query on projects queued behind the
    ALTER. The table is isolated already: start-up reads the catalogue and runs no DDL."""
    gateway, http = await gateways(transfer_idle_timeout=4 * HANG_GUARD)
    exporter = await register_as(http, "admin@ddl-exporter.io", plan="enterprise")
    bystander = await register_as(http, "admin@ddl-bystander.io", plan="enterprise")
    reading = asyncio.Event()
    release = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            reading.set()  # the header is out: every table has been read, and stays locked
            await release.wait()

    export = asyncio.ensure_future(gateway(export_scope(exporter), never_disconnects, send))
    try:
        await asyncio.wait_for(reading.wait(), HANG_GUARD)
        await asyncio.wait_for(create_projects_table(postgres_url), HANG_GUARD)
        conn = await asyncpg.connect(postgres_url)
        try:
            await asyncio.wait_for(isolate_table(conn, "projects"), HANG_GUARD)
        finally:
            await conn.close()
        worker = TenantGateway(
            build_demo_app(postgres_url),
            database_url=postgres_url,
            redis_url=redis_url,
            redis_key_prefix=redis_prefix,
        )
        await asyncio.wait_for(worker.startup(), HANG_GUARD)
        await worker.shutdown()
        listed = await http.get("/api/v1/projects", headers=auth(bystander))
        assert listed.status_code == 200, listed.text
    finally:
        release.set()
        await asyncio.wait_for(export, HANG_GUARD)


async def test_start_up_ddl_gives_up_on_a_held_table(postgres_url: str) -> None:
    """Review #1: when DDL is needed (the table is not isolated yet) and a long transaction
    holds the table, each try waits at most its lock timeout, the table's other queries go on,
    and it ends in ``StoreBusy`` naming the table (one line at start-up), not in a queue that
    never drains. Once the holder is gone it goes through."""
    name = f"tg_ddl_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _url_with_database(PG_ADMIN_URL, name)
    try:
        database = Database(url)
        await database.connect()  # the gateway's own migrations
        await database.close()
        holder = await asyncpg.connect(url)
        try:
            await holder.execute(PROJECTS_SCHEMA)  # created, not isolated
            reading = holder.transaction()
            await reading.start()
            await holder.fetch("SELECT * FROM projects")  # a share lock, held
            with pytest.raises(StoreBusy, match="projects") as refused:
                await asyncio.wait_for(
                    create_projects_table(url, lock_timeout=0.1, attempts=2), HANG_GUARD
                )
            assert "\n" not in str(refused.value)
            other = await asyncpg.connect(url)
            try:
                assert await other.fetchval("SELECT count(*) FROM projects") == 0
            finally:
                await other.close()
            await reading.rollback()
            await create_projects_table(url, lock_timeout=0.1, attempts=2)
            assert await is_isolated(holder, "projects")
        finally:
            await holder.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
