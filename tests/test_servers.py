"""The gateway under other servers, as real processes: without lifespan events (daphne,
uvicorn ``--lifespan off``) no usage is lost at SIGTERM; a body over the limit never leaves a
keep-alive connection hanging (uvicorn, and hypercorn under Quart)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from benchmarks.launch import HOST, REPO, Server, host_and_port
from tenant_gateway import TenantGateway
from tenant_gateway.exchange import DISCARD_LIMIT

from .framework_apps import APPS, OPEN_PLAN
from .test_ledger_processes import ledger_calls, redis_calls

pytestmark = pytest.mark.slow

APP = "tests.served_app:application"
SERVERS: dict[str, tuple[Sequence[str], Callable[[str, int], Sequence[str]]]] = {
    "daphne": ((sys.executable, "-m", "daphne"), lambda host, port: ["-b", host, "-p", str(port)]),
    "uvicorn --lifespan off": (
        (sys.executable, "-m", "uvicorn", "--lifespan", "off"),
        host_and_port,
    ),
    "uvicorn": ((sys.executable, "-m", "uvicorn"), host_and_port),
    "hypercorn": (
        (sys.executable, "-m", "hypercorn"),
        lambda host, port: ["--bind", f"{host}:{port}"],
    ),
}
NO_LIFESPAN = "the server sends no lifespan events"


def serve(server: str, framework: str, **env: str) -> Server:
    command, address = SERVERS[server]
    started = Server(
        APP,
        command=command,
        address=address,
        cwd=REPO,
        env={"TG_TEST_FRAMEWORK": framework, **env},
    )
    started.wait_ready()
    return started


async def register(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base) as client:
        answer = await client.post(
            "/api/v1/tenants/register",
            json={"name": "S", "plan": "open", "admin_email": "s@s.io"},
        )
    assert answer.status_code == 201, answer.text
    tenant: dict[str, Any] = answer.json()
    return tenant


CALLS = 12


@pytest.mark.parametrize(
    ("server", "framework"),
    [("daphne", "fastapi"), ("daphne", "django"), ("uvicorn --lifespan off", "fastapi")],
)
async def test_no_usage_lost_at_sigterm_without_lifespan(
    server: str, framework: str, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    """The gateway starts on the first request and, with no lifespan shutdown to come, flushes
    at the process's end: every call answered is in the ledger. The flush interval is an hour,
    so without that final flush none would be."""
    started = serve(
        server,
        framework,
        TG_DATABASE_URL=postgres_url,
        TG_REDIS_URL=redis_url,
        TG_REDIS_KEY_PREFIX=redis_prefix,
        TG_FLUSH_INTERVAL="3600",
    )
    try:
        tenant = await register(started.base)
        async with httpx.AsyncClient(base_url=started.base) as client:
            for n in range(CALLS):
                answer = await client.get(f"/items/{n}", headers={"X-API-Key": tenant["api_key"]})
                assert answer.status_code == 200, answer.text
        started.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(started.process.wait, 60)
    finally:
        log = started.stop()
    in_ledger = await ledger_calls(postgres_url, tenant["id"])
    print(f"{server} + {framework}: answered={CALLS} ledger={in_ledger}")  # pytest -s
    assert in_ledger == CALLS, log
    assert await redis_calls(redis_url, redis_prefix, tenant["id"]) == CALLS
    assert log.count(NO_LIFESPAN) == 1, log
    assert "Traceback" not in log, log


def test_usage_flushed_when_asyncio_run_ends(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server on ``asyncio.run`` that returns without lifespan events (httpx's ASGI transport
    here sends none): ``asyncio.run`` cancels the tasks left, and the gateway's watcher among
    them shuts it down, flushing. The missing lifespan is logged once."""
    gateway = TenantGateway(
        APPS["fastapi"](),
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        usage_flush_interval=3600,
        plans=OPEN_PLAN,
    )

    async def serve_then_return() -> str:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.post(
                "/api/v1/tenants/register",
                json={"name": "R", "plan": "open", "admin_email": "r@r.io"},
            )
            tenant = answer.json()
            for n in range(CALLS):
                headers = {"X-API-Key": tenant["api_key"]}
                assert (await client.get(f"/items/{n}", headers=headers)).status_code == 200
        tenant_id: str = tenant["id"]
        return tenant_id

    tenant_id = asyncio.run(serve_then_return())
    assert asyncio.run(redis_calls(redis_url, redis_prefix, tenant_id)) == CALLS
    assert [r.message for r in caplog.records].count(
        "the server sends no lifespan events: the gateway started on the first request and"
        " flushes usage when the process exits"
    ) == 1


# -- a body over the limit, on a keep-alive connection --------------------------------------

LIMIT = 100


@pytest.fixture(params=[("uvicorn", "fastapi"), ("hypercorn", "quart")], ids=lambda p: "+".join(p))
def limited(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server whose app takes bodies of 100 bytes at most (memory stores)."""
    server, framework = request.param
    started = serve(server, framework, TG_MAX_BODY_BYTES=str(LIMIT))
    yield started
    log = started.stop()
    assert "Traceback" not in log, log


class Connection:
    """One raw keep-alive HTTP/1.1 connection: what a client sends and reads, byte by byte."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection((HOST, server.port), timeout=10)
        self.buffer = b""

    def send_chunked(self, key: str, size: int, chunk_size: int = 8192) -> threading.Thread:
        """A chunked upload of ``size`` bytes, sent from a thread (the answer may come while
        it is still sending; a closed connection ends it)."""
        head = (
            "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            f"X-API-Key: {key}\r\n\r\n"
        ).encode()
        chunk = b"%x\r\n" % chunk_size + b"z" * chunk_size + b"\r\n"

        def upload() -> None:
            try:
                self.sock.sendall(head)
                for _ in range(size // chunk_size):
                    self.sock.sendall(chunk)
                self.sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server closed the connection: what the test looks at

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        return sender

    def read_answer(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of the next response (by its Content-Length)."""
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def _read(self) -> None:
        data = self.sock.recv(65536)  # a hang ends in socket.timeout, failing the test
        if not data:
            raise ConnectionError("closed by the server")
        self.buffer += data

    def closed_by_server(self) -> bool:
        """Whether the server ends the connection (EOF or reset) before the socket's timeout."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


async def test_a_body_over_the_limit_leaves_the_connection_usable(limited: Server) -> None:
    """The rest of the body is read and dropped (up to DISCARD_LIMIT): the 413 arrives, and
    the same connection answers the next request. Under hypercorn + Quart this next request
    used to hang: the app's answer waited for room in hypercorn's full body queue."""
    key = (await register(limited.base))["api_key"]
    connection = Connection(limited)
    # 64 chunks: more than hypercorn queues for an app (10) before it stops reading
    connection.send_chunked(key, 64 * 1024, chunk_size=1024).join(timeout=10)
    status, headers, body = connection.read_answer()
    assert status == 413 and b"payload_too_large" in body
    assert headers.get("connection") != "close"
    request = f"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nX-API-Key: {key}\r\n\r\n"
    connection.sock.sendall(request.encode() + b"12345")
    status, _, body = connection.read_answer()
    assert status == 200 and json.loads(body) == {"bytes": 5}


async def test_a_body_far_over_the_limit_closes_the_connection(limited: Server) -> None:
    """Past DISCARD_LIMIT the 413 says ``Connection: close`` and the server ends the
    connection: a keep-alive client is never left waiting on it."""
    key = (await register(limited.base))["api_key"]
    connection = Connection(limited)
    started = time.monotonic()
    sender = connection.send_chunked(key, 2 * DISCARD_LIMIT)
    status, headers, _ = connection.read_answer()
    assert status == 413 and headers.get("connection") == "close"
    assert connection.closed_by_server()
    sender.join(timeout=10)
    assert not sender.is_alive() and time.monotonic() - started < 10
