"""How a transfer waits on its client: never longer than its idle timeout, never slower than
its pace allows, never past its deadline (``TransferPace``).

An export whose client stops reading shows up as ``send`` blocking (the server applies
backpressure); an import whose client stops sending, as ``receive`` waiting. Either wait is
bounded, and so is the pace across waits (a client that sends a byte every 9 s never waits 10);
past either bound the transfer ends: its database transaction is rolled back and its
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
from tenant_gateway.transfers import TransferPace

__all__ = ["TransferStream", "idle_limited"]

logger = logging.getLogger("tenant_gateway.transfer")


class _ClientTooSlow(Exception):
    """The client read nothing for the idle timeout, or kept too slow a pace."""


def _waited_too_long(pace: TransferPace, idle_timeout: float, who: str) -> str:
    return pace.overdue() or f"the client {who} nothing for {idle_timeout:g} s"


async def idle_limited(
    chunks: AsyncIterator[bytes], idle_timeout: float, pace: TransferPace
) -> AsyncIterator[bytes]:
    """The request body as it arrives; 408 ``request_timeout`` when nothing arrives for
    ``idle_timeout`` seconds, when the client falls below the pace's minimum rate or the
    transfer passes its deadline, and a problem, not a crash, when the client goes away."""
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(pace.wait_limit(idle_timeout)):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            waited = _waited_too_long(pace, idle_timeout, "sent")
            raise problems.request_timeout(f"Nothing was imported: {waited}.") from None
        except ClientDisconnect:
            raise problems.client_disconnected(
                "Nothing was imported: the client closed the connection before the end."
            ) from None
        if (why := pace.moved(len(chunk))) is not None:
            raise problems.request_timeout(f"Nothing was imported: {why}.")
        yield chunk


class TransferStream(StreamingResponse):
    """An export's response.

    The first chunk is read before anything is sent, so a transfer refused or failing at its
    start gets a problem answer (``refusal``), not a 200 that breaks off. Each send may wait
    ``idle_timeout`` seconds for the client to read, and the client must keep the ``pace``
    (which starts once the first chunk is ready); past either the stream is cut: the generator
    is closed (its transaction ends, its connection goes back) and the connection to the client
    is closed with the response incomplete. ``on_close`` runs once the response is over,
    whichever way.
    """

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        idle_timeout: float,
        pace: TransferPace,
        refusal: Callable[[TransferBusy | StoreUnavailable], Problem],
        on_close: Callable[[], None],
        media_type: str,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self._chunks = chunks
        self._idle_timeout = idle_timeout
        self._pace = pace
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
            except _ClientTooSlow as exc:
                logger.warning("export cut: %s", exc)
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
        self._pace.restart()
        await self._send(send, _start(self.status_code, self.raw_headers))
        await self._send(send, _body(first, more=True))
        async for chunk in chunks:
            await self._send(send, _body(chunk, more=True))
        await self._send(send, _body(b"", more=False))

    async def _send(self, send: Send, message: Message) -> None:
        try:
            async with asyncio.timeout(self._pace.wait_limit(self._idle_timeout)):
                await send(message)
        except TimeoutError:
            raise _ClientTooSlow(_waited_too_long(self._pace, self._idle_timeout, "read")) from None
        if message.get("more_body") and (why := self._pace.moved(len(message["body"]))):
            raise _ClientTooSlow(why)


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers}


def _body(chunk: bytes | memoryview, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": more}
