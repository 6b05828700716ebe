"""A gateway served over real HTTP by uvicorn in a thread of the test process, so a browser can
reach it while the test keeps its injected clock; and the synthetic month of usage the console's
pages and screenshots show."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import uvicorn

from tenant_gateway import TenantGateway

from .conftest import FakeClock

__all__ = ["MONTH_START", "NOW", "serve_in_thread", "synthetic_month"]

MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
"""Where the synthetic month stops: the 20th, with the month's rate running out the quota."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(gateway: TenantGateway) -> Iterator[str]:
    """The gateway on a free loopback port (lifespan on): its base URL, until the block ends."""
    port = _free_port()
    config = uvicorn.Config(gateway, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the console's test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _daily_calls(day: int) -> int:
    """A working-week shape: busier on weekdays, a little growth through the month."""
    weekday = (MONTH_START + timedelta(days=day - 1)).weekday()
    return (14 if weekday >= 5 else 34) + day + (day * 7) % 9


def synthetic_month(client: httpx.Client, clock: FakeClock, key: str) -> dict[str, int]:
    """Calls through the gateway from the 1st to ``NOW``, the clock moved between them (a
    minute apart: under the free plan's burst limit), and on the 12th a burst of 15 at one
    instant (5 refused: ``rate_limited``). The admitted calls by day."""
    headers = {"Authorization": f"Bearer {key}"}
    by_day: dict[str, int] = {}
    for day in range(1, NOW.day + 1):
        clock.set(MONTH_START + timedelta(days=day - 1, hours=8))
        count = _daily_calls(day) if day < NOW.day else 9
        for index in range(count):
            path = ("/whoami", "/items/42", "/echo", "/whoami", "/items/7", "/fail")[index % 6]
            method = "POST" if path == "/echo" else "GET"
            answer = client.request(method, path, headers=headers, content=b"{}")
            assert answer.status_code < 500 or path == "/fail", answer.text
            clock.advance(60)
        by_day[f"{MONTH_START:%Y-%m}-{day:02d}"] = count
        if day == 12:
            clock.advance(1)
            statuses = [client.get("/whoami", headers=headers).status_code for _ in range(15)]
            assert statuses.count(429) == 5, statuses
            by_day[f"{MONTH_START:%Y-%m}-{day:02d}"] += 10
    clock.set(NOW)
    return by_day
