"""Concurrent keep-alive HTTP load, paced or as fast as answers come, every answer counted.

``Load(target, request, connections=16, rate=None)`` opens ``connections`` connections to
``target`` and sends ``request`` (or what ``request(connection)`` returns, call by call) on each,
one request after another, until ``stop()``; with ``rate`` (requests a second, all connections
together) each request leaves on its schedule rather than when the last answer came, so a slower
server shows as latency, not as fewer calls. Each answer's status, latency and send time are
kept, and each request that got none (connection error, timeout) is counted by exception.

``target`` is a base URL (``http://127.0.0.1:8000``), spoken to by the minimal HTTP/1.1 client
below (a fraction of httpx's CPU per request, so the load generator stays small beside the
server), or an ``httpx.AsyncClient`` (an in-process ASGI app under test).
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

__all__ = ["Load", "ProtocolError", "Request", "Summary", "percentile_ms", "read_response"]

TIMEOUT = 30.0
"""Seconds a request may wait for its answer before it counts as lost."""


def percentile_ms(seconds: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``seconds`` lie, in milliseconds (NaN for none)."""
    if not seconds:
        return math.nan
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    done: Callable[[int | None, bytes], None] | None = None
    """Called with the answer's status and body, or with ``None`` when none came."""


@dataclass(frozen=True, slots=True)
class Summary:
    """The answers (and the requests left unanswered) of a stretch of a load."""

    statuses: Counter[int]
    errors: Counter[str]
    latencies: list[float]
    """Seconds from sending to the answer, in the order the answers came."""
    sent: list[float]
    """When each of those requests left (``time.monotonic()``)."""

    @property
    def responses(self) -> int:
        return len(self.latencies)

    def percentile_ms(self, fraction: float) -> float:
        return percentile_ms(self.latencies, fraction)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server keeps the connection) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            keep_alive = "close" not in value.lower()
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", keep_alive
    if length is not None:
        return status, await reader.readexactly(length), keep_alive
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, bytes(body), keep_alive
    return status, await reader.read(), False


class _Socket:
    """One keep-alive HTTP/1.1 connection on asyncio streams."""

    errors: tuple[type[Exception], ...] = (
        OSError,
        TimeoutError,
        asyncio.IncompleteReadError,
        ProtocolError,
    )

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> None:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)

    async def send(self, request: Request) -> tuple[int, bytes]:
        if self._streams is None:
            raise ConnectionError("not open")
        reader, writer = self._streams
        head = f"{request.method} {request.path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
        if request.body:
            head += f"Content-Length: {len(request.body)}\r\n"
        writer.write((head + "\r\n").encode() + request.body)
        status, body, keep_alive = await read_response(reader)
        if not keep_alive:
            self.close()
        return status, body

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


class _InProcess:
    """Calls through an ``httpx.AsyncClient`` (an ASGI app in this process)."""

    errors: tuple[type[Exception], ...] = (httpx.TransportError,)

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def open(self) -> None:
        pass

    async def send(self, request: Request) -> tuple[int, bytes]:
        response = await self._client.request(
            request.method, request.path, headers=dict(request.headers), content=request.body
        )
        await asyncio.sleep(0)  # an app in process may answer without suspending: let others run
        return response.status_code, response.content

    def close(self) -> None:
        pass


class Load:
    """``connections`` concurrent connections sending requests until ``stop()``; each waits for
    its last answer, so every request sent is counted."""

    def __init__(
        self,
        target: str | httpx.AsyncClient,
        request: Request | Callable[[int], Request],
        connections: int = 16,
        rate: float | None = None,
    ) -> None:
        self.target, self.connections, self.rate = target, connections, rate
        self._request = request
        self.statuses: array[int] = array("H")
        self.latencies: array[float] = array("d")
        self.sent: array[float] = array("d")
        self.errors: list[tuple[float, str]] = []
        """(when, exception) of each request that got no answer, and each failed connect."""
        self.started_at = 0.0
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _connection(self) -> _Socket | _InProcess:
        if isinstance(self.target, httpx.AsyncClient):
            return _InProcess(self.target)
        url = urlsplit(self.target)
        return _Socket(url.hostname or "127.0.0.1", url.port or 80)

    async def _loop(self, number: int) -> None:
        connection = self._connection()
        request = self._request
        interval = self.connections / self.rate if self.rate else 0.0
        due = self.started_at + number / self.rate if self.rate else 0.0
        try:
            while not self._stopping.is_set():
                if interval:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    due += interval
                    if self._stopping.is_set():
                        break
                try:
                    await connection.open()
                except OSError as exc:
                    self.errors.append((time.monotonic(), f"connect: {type(exc).__name__}"))
                    await asyncio.sleep(0.1)
                    continue
                call = request if isinstance(request, Request) else request(number)
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(TIMEOUT):
                        status, body = await connection.send(call)
                except connection.errors as exc:
                    self.errors.append((sent, type(exc).__name__))
                    connection.close()
                    if call.done is not None:
                        call.done(None, b"")
                    continue
                self.latencies.append(time.monotonic() - sent)
                self.sent.append(sent)
                self.statuses.append(status)
                if call.done is not None:
                    call.done(status, body)
        finally:
            connection.close()

    def start(self) -> None:
        """Open the connections and start sending (in a running event loop)."""
        self.started_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._loop(n)) for n in range(self.connections)]

    async def stop(self) -> None:
        """Stop sending, and wait for every connection's last answer."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def until(self, count: int, seconds: float = 0.0, within: float = 60.0) -> None:
        """Let the load run until ``count`` more answers have come and it has run ``seconds``:
        progress, not a timer, so a slow machine only waits longer. Raises when no answer has
        come for ``within`` seconds (a hang)."""
        target = len(self.statuses) + count
        seen, last_progress = len(self.statuses), time.monotonic()
        while len(self.statuses) < target or time.monotonic() - self.started_at < seconds:
            if len(self.statuses) > seen:
                seen, last_progress = len(self.statuses), time.monotonic()
            elif time.monotonic() - last_progress > within:
                raise RuntimeError(f"no answer for {within} s, {target - seen} missing")
            await asyncio.sleep(0.005)

    @property
    def slowest(self) -> float:
        """The longest wait for an answer, in seconds."""
        return max(self.latencies, default=0.0)

    @property
    def ok_times(self) -> list[float]:
        """When each 2xx answer came (``time.monotonic()``), in the order they came."""
        return [
            sent + latency
            for sent, latency, status in zip(self.sent, self.latencies, self.statuses, strict=True)
            if 200 <= status < 300
        ]

    def mark(self) -> tuple[int, int]:
        """Where the load's records are now: ``summary(since=...)`` takes it."""
        return len(self.statuses), len(self.errors)

    def summary(
        self, since: tuple[int, int] = (0, 0), start: float = -math.inf, end: float = math.inf
    ) -> Summary:
        """The answers recorded since ``since`` (a ``mark()``) to requests sent from ``start``
        until ``end``, and the requests of that time that got none."""
        answers, failures = since
        picked = [i for i in range(answers, len(self.statuses)) if start <= self.sent[i] < end]
        return Summary(
            statuses=Counter(self.statuses[i] for i in picked),
            errors=Counter(name for at, name in self.errors[failures:] if start <= at < end),
            latencies=[self.latencies[i] for i in picked],
            sent=[self.sent[i] for i in picked],
        )
