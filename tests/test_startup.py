"""A gateway whose stores cannot start: with lifespan events, the start-up fails (one line, and
the server exits) instead of serving errors; without them, each request answers 503
``gateway_not_started`` and the next one tries again."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from benchmarks.launch import HOST, REPO, free_port
from tenant_gateway import TenantGateway
from tenant_gateway.lifespan import relay

from .apps import echo_app
from .helpers import as_admin, assert_problem, proxy_to, register_as, through

T = "/api/v1/tenants"


def _as_user(url: str, login: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port}").geturl()


def _closed_port_url(scheme: str) -> str:
    """A URL of ``scheme`` on a loopback port nothing listens on."""
    if scheme == "postgresql":
        return f"postgresql://root@{HOST}:{free_port()}/x"
    return f"redis://{HOST}:{free_port()}/0"


@pytest.fixture
def weak_login(postgres_url: str) -> Iterator[str]:
    """The URL of a login that owns a database of its own but may neither create roles nor act
    as the gateway's owner role: the migrations refuse it (a configuration error)."""
    suffix = uuid.uuid4().hex[:10]
    login = name = f"tg_weak_{suffix}"
    asyncio.run(as_admin(f'CREATE ROLE "{login}" LOGIN'))
    asyncio.run(as_admin(f'CREATE DATABASE "{name}" OWNER "{login}"'))
    try:
        yield _as_user(postgres_url.rsplit("/", 1)[0] + "/" + name, login)
    finally:
        asyncio.run(as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(as_admin(f'DROP OWNED BY "{login}"; DROP ROLE IF EXISTS "{login}"'))


class AppLifespan:
    """A wrapped app that records whether its own lifespan start-up ran."""

    def __init__(self) -> None:
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        self.started = True
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})


async def _lifespan_startup(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> Message:
    """Drive the ASGI lifespan protocol as a server does: the start-up event, then the one
    answer (a server stops reading after ``startup.failed``)."""
    sent: list[Message] = []
    events: asyncio.Queue[Message] = asyncio.Queue()
    await events.put({"type": "lifespan.startup"})

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete":
            await events.put({"type": "lifespan.shutdown"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await asyncio.wait_for(app(scope, events.get, send), timeout=30)
    assert sent, "the lifespan answered nothing"
    return sent[0]


async def _startup_answer(**stores: str) -> str:
    """The message of ``lifespan.startup.failed`` from a gateway on ``stores``; the wrapped
    app's own start-up must not have run."""
    app = AppLifespan()
    answer = await _lifespan_startup(
        TenantGateway(app, database_url=stores.get("database"), redis_url=stores.get("redis"))
    )
    assert answer["type"] == "lifespan.startup.failed", answer
    assert not app.started
    message: str = answer["message"]
    assert "\n" not in message, message
    return message


async def test_a_store_that_cannot_start_fails_the_lifespan(postgres_url: str) -> None:
    """``lifespan.startup.failed`` with one line naming the store and why: PostgreSQL or Redis
    unreachable, a login PostgreSQL does not know. The wrapped app's own start-up never runs,
    so nothing serves."""
    closed = _closed_port_url("postgresql")
    assert (await _startup_answer(database=closed)).startswith(
        f"cannot reach PostgreSQL at {closed}: "
    )
    unknown = _as_user(postgres_url, "tg_no_such_login")
    message = await _startup_answer(database=unknown)
    assert (
        message == f'cannot reach PostgreSQL at {unknown}: role "tg_no_such_login" does not exist'
    )
    closed = _closed_port_url("redis")
    assert (await _startup_answer(redis=closed)).startswith(f"cannot reach Redis at {closed}: ")


async def test_a_login_that_may_not_migrate_fails_the_lifespan(weak_login: str) -> None:
    message = await _startup_answer(database=weak_login)
    assert "may not apply the migrations" in message and "tenant_gateway_owner" in message


async def test_a_fault_of_the_gateway_fails_the_lifespan_with_its_traceback_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any other error from the start-up fails it too (never read by a server as "no lifespan
    support" and then served): one line for the server, the traceback in the log."""
    app = AppLifespan()

    async def startup() -> None:
        raise RuntimeError("something\nunforeseen")

    async def shutdown() -> None:
        raise AssertionError("nothing started, nothing to stop")

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        await relay(app, startup, shutdown, scope, receive, send)

    with caplog.at_level(logging.ERROR, logger="tenant_gateway"):
        answer = await _lifespan_startup(run)
    assert answer == {
        "type": "lifespan.startup.failed",
        "message": "the gateway failed to start: RuntimeError: something unforeseen",
    }
    (record,) = [r for r in caplog.records if r.name == "tenant_gateway"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert not app.started


async def test_without_lifespan_requests_answer_503_until_the_store_is_back(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No lifespan events (the gateway starts on a request): while PostgreSQL cannot be reached
    every request, the health routes included, answers 503 gateway_not_started with a
    Retry-After and no word of the store's address; the reason is logged once. Once it is
    back, the next request starts the gateway."""
    proxy = await proxy_to(postgres_url)
    await proxy.stop()
    gateway = TenantGateway(echo_app(), database_url=through(postgres_url, proxy))
    transport = httpx.ASGITransport(app=gateway)  # sends no lifespan events
    caplog.set_level(logging.ERROR, logger="tenant_gateway")
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for path in ("/whoami", "/readyz", "/healthz", f"{T}/register"):
                answer = await client.get(path)
                body = assert_problem(answer, 503, "gateway_not_started")
                assert answer.headers["retry-after"] == "5"
                assert "backing store" in body["detail"] and str(proxy.port) not in body["detail"]
            logged = [r.getMessage() for r in caplog.records if r.name == "tenant_gateway"]
            assert len(logged) == 1, logged  # once, not once per request
            url = gateway.settings.database_url
            assert logged[0].startswith(
                f"the gateway could not start: cannot reach PostgreSQL at {url}:"
            )
            await proxy.start()  # the same port
            await register_as(client, "back@example.com")
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await gateway.shutdown()
        await proxy.stop()


async def test_without_lifespan_a_configuration_error_answers_503_without_retry_after(
    weak_login: str,
) -> None:
    gateway = TenantGateway(echo_app(), database_url=weak_login)
    transport = httpx.ASGITransport(app=gateway)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            answer = await client.get("/whoami")
        body = assert_problem(answer, 503, "gateway_not_started")
        assert "retry-after" not in answer.headers
        assert "configuration error" in body["detail"] and "tg_weak" not in body["detail"]
    finally:
        await gateway.shutdown()


SERVED = "tests.served_app:application"


@pytest.mark.slow
@pytest.mark.parametrize("store", ["postgres-unreachable", "postgres-wrong-login", "redis"])
def test_uvicorn_exits_with_the_one_line_reason(store: str, postgres_url: str) -> None:
    """A real server: uvicorn with a database URL it cannot use exits non-zero at start-up,
    having logged the reason in one line and no traceback of ours; it never served."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TG_")}
    env["TG_TEST_FRAMEWORK"] = "raw"
    if store == "postgres-unreachable":
        env["TG_DATABASE_URL"] = _closed_port_url("postgresql")
        reason = f"cannot reach PostgreSQL at {env['TG_DATABASE_URL']}: "
    elif store == "postgres-wrong-login":
        env["TG_DATABASE_URL"] = _as_user(postgres_url, "tg_no_such_login")
        reason = f'cannot reach PostgreSQL at {env["TG_DATABASE_URL"]}: role "tg_no_such_login"'
    else:
        env["TG_REDIS_URL"] = _closed_port_url("redis")
        reason = f"cannot reach Redis at {env['TG_REDIS_URL']}: "
    finished = subprocess.run(
        [sys.executable, "-m", "uvicorn", SERVED, "--host", HOST, "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    said = [line for line in output.splitlines() if reason in line]
    assert len(said) == 1 and said[0].startswith("ERROR:    " + reason), output
    assert "Application startup failed. Exiting." in output
    assert "Traceback" not in output and "Uvicorn running on" not in output, output
