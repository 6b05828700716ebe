"""The gate's request plumbing, on the hot path: the credential and body framing read from the
raw headers in one pass, the wrapper that adds the RateLimit headers to an admitted request's
response and counts a body the server does not frame, and a refusal answered over HTTP or a
websocket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.types import Message, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.exceptions import Problem
from tenant_gateway.headers import Header
from tenant_gateway.keys import api_key_from, api_key_from_lines

__all__ = ["BodyTooLarge", "Exchange", "refuse", "refuse_unread", "scan_headers"]


class BodyTooLarge(Exception):
    """Raised from the wrapped ``receive`` when a streamed body passes the limit."""


def scan_headers(scope: Scope) -> tuple[str | None, str | None, bool]:
    """(API key, Content-Length, Transfer-Encoding present) in one pass over the raw headers
    (the hot path's only parse); the key rules are those of ``extract_api_key``. Credentials
    that differ raise ``ambiguous_credentials``; a repeated line is rare, so only then are
    all the lines gathered again."""
    authorization: bytes | None = None
    api_key: bytes | None = None
    length: str | None = None
    encoded = repeated = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            repeated = repeated or (authorization is not None and value != authorization)
            authorization = value
        elif name == b"x-api-key":
            repeated = repeated or (api_key is not None and value != api_key)
            api_key = value
        elif name == b"content-length":
            length = value.decode("latin-1")
        elif name == b"transfer-encoding":
            encoded = True
    if repeated:
        lines = scope["headers"]
        key = api_key_from_lines(
            [value.decode("latin-1") for name, value in lines if name == b"authorization"],
            [value.decode("latin-1") for name, value in lines if name == b"x-api-key"],
        )
    else:
        key = api_key_from(
            None if authorization is None else authorization.decode("latin-1"),
            None if api_key is None else api_key.decode("latin-1"),
        )
    return key, length, encoded


class Exchange:
    """One admitted request's way through the app: adds the rate-limit headers to the
    response, notes its status, and counts a body the server does not frame against the limit.
    (A small class rather than closures: one object per request, no cell variables.)"""

    __slots__ = (
        "_headers",
        "_limit",
        "_receive",
        "_send",
        "body_left",
        "overflow",
        "received",
        "started",
        "status",
    )

    def __init__(
        self, send: Send, headers: tuple[Header, ...], receive: Receive, limit: int
    ) -> None:
        self._send = send
        self._headers = headers
        self._receive = receive
        self._limit = limit
        self.received = 0
        self.status = 500
        self.started = False
        self.overflow = False
        self.body_left = False
        """Whether more of the body was to come when it passed the limit."""

    def send(self, message: Message) -> Awaitable[None]:
        """Not ``async``: it hands back the server's own awaitable, so a response message costs
        no extra coroutine (ASGI's ``send`` need only return something awaitable)."""
        if self.overflow:
            return _ignored()  # the 413 the gateway answers replaces what the app tries to say
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.status = message["status"]
            if self._headers:
                message["headers"] = [*message.get("headers", ()), *self._headers]
        elif kind == "websocket.accept":
            self.started = True
            self.status = 101
        return self._send(message)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self._limit:
                self.overflow = True
                self.body_left = message.get("more_body", False)
                raise BodyTooLarge
        return message


async def _ignored() -> None:
    return None


DISCARD_LIMIT = 1024 * 1024
"""Bytes of a refused body read and dropped past the limit, so that a body ending within them
leaves its connection ready for the client's next request."""


async def refuse_unread(problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request whose body was not read to its end (it went past the limit).

    Up to ``DISCARD_LIMIT`` more bytes are read and dropped first: if the body ends within
    them, the connection is left as clean as after any answer. Past them, the answer closes
    the connection (``Connection: close`` over HTTP/1), and what still comes is read and
    dropped while it is sent: a server that queues the body for the app (hypercorn) waits for
    room in that queue before it takes the answer's last message, and would wait forever."""
    if await _discard(receive, DISCARD_LIMIT):
        await refuse(problem, scope, receive, send)
        return
    if scope.get("http_version", "1.1") < "2":
        problem.headers["Connection"] = "close"
    discard = asyncio.create_task(_discard(receive, None))
    try:
        await refuse(problem, scope, receive, send)
    finally:
        discard.cancel()


async def _discard(receive: Receive, limit: int | None) -> bool:
    """Read the body's rest, up to ``limit`` bytes: whether it ended (or the client left)."""
    dropped = 0
    while limit is None or dropped <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return True
        dropped += len(message.get("body", b""))
    return False


async def refuse(problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a refusal: problem+json over HTTP; over a websocket, a denial response when the
    server supports it, else a close with code 1008 (policy violation)."""
    response = problems.problem_response(problem)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": problem.code})
