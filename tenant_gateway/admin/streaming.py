"""How a transfer waits on its client: never longer than its idle timeout.

An export whose client stops reading shows up as ``send`` blocking (the server applies
backpressure); an import whose client stops sending, as ``receive`` waiting. Either wait is
bounded, and past it the transfer ends: its database transaction is rolled back and its
connection goes back to the pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.exceptions import Problem, StoreUnavailable, TransferBusy

__all__ = ["TransferStream", "idle_limited"]

logger = logging.getLogger("tenant_gateway.transfer")


class _ClientIdle(Exception):
    """The client read nothing for the idle timeout."""


async def idle_limited(chunks: AsyncIterator[bytes], idle_timeout: float) -> AsyncIterator[bytes]:
    """The request body as it arrives; 408 ``request_timeout`` when nothing arrives for
    ``idle_timeout`` seconds (however long the whole body takes while it keeps coming), and a
    problem, not a crash, when the client goes away."""
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise problems.request_timeout(
                f"Nothing was imported: the client sent nothing for {idle_timeout:g} s."
            ) from None
        except ClientDisconnect:
            raise problems.client_disconnected(
                "Nothing was imported: the client closed the connection before the end."
            ) from None
        yield chunk


class TransferStream(StreamingResponse):
    """An export's response.

    The first chunk is read before anything is sent, so a transfer refused or failing at its
    start gets a problem answer (``refusal``), not a 200 that breaks off. Each send may wait
    ``idle_timeout`` seconds for the client to read; past that the stream is cut: the generator
    is closed (its transaction ends, its connection goes back) and the connection to the client
    is closed with the response incomplete. ``on_close`` runs once the response is over,
    whichever way.
    """

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        idle_timeout: float,
        refusal: Callable[[TransferBusy | StoreUnavailable], Problem],
        on_close: Callable[[], None],
        media_type: str,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self._chunks = chunks
        self._idle_timeout = idle_timeout
        self._refusal = refusal
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()

    async def stream_response(self, send: Send) -> None:
        async with aclosing(self._chunks) as chunks:
            try:
                await self._stream(chunks, send)
            except _ClientIdle:
                logger.warning("export cut: the client read nothing for %g s", self._idle_timeout)
            except StoreUnavailable as exc:  # the status is sent: all that is left is to stop
                logger.warning("export cut: %s", exc)

    async def _stream(self, chunks: AsyncGenerator[bytes, None], send: Send) -> None:
        try:
            first = await anext(chunks, b"")
        except (TransferBusy, StoreUnavailable) as exc:
            refused = problems.problem_response(self._refusal(exc))
            await self._send(send, _start(refused.status_code, refused.raw_headers))
            await self._send(send, _body(refused.body, more=False))
            return
        await self._send(send, _start(self.status_code, self.raw_headers))
        await self._send(send, _body(first, more=True))
        async for chunk in chunks:
            await self._send(send, _body(chunk, more=True))
        await self._send(send, _body(b"", more=False))

    async def _send(self, send: Send, message: Message) -> None:
        try:
            async with asyncio.timeout(self._idle_timeout):
                await send(message)
        except TimeoutError:
            raise _ClientIdle from None


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers}


def _body(chunk: bytes | memoryview, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": more}
