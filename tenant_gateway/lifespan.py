"""The gateway's start and stop: with the server's lifespan events, or without them.

A server that sends lifespan events (uvicorn, hypercorn, granian) starts the gateway before
the first request and stops it — the final usage flush — before it exits; ``relay`` answers
them for the gateway and the wrapped app together. A gateway that cannot start answers
``lifespan.startup.failed`` with one line saying why (``start_failure``), so the server exits
rather than serve errors; the wrapped app is then not started. A server that sends none
(daphne, uvicorn ``--lifespan off``) leaves the gateway to start on its first request;
``FinalFlush`` then stops it when the process ends, so the usage of the last flush interval
still reaches the stores.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, TypeAlias

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.exceptions import ConfigurationError, Problem, StoreUnavailable

__all__ = ["FinalFlush", "StartFailures", "expected_failure", "relay", "start_failure"]

logger = logging.getLogger("tenant_gateway")

Step = Callable[[], Awaitable[None]]
Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers


async def relay(
    app: ASGIApp, startup: Step, shutdown: Step, scope: Scope, receive: Receive, send: Send
) -> None:
    """Start before the wrapped app does, stop after it has; relay every event."""
    app_answered = app_finished = False
    startup_message = await receive()
    failure = None
    try:
        await startup()
    except Exception as exc:  # whatever it is: never read as "no lifespan support", then served
        failure = start_failure(exc)
        if not expected_failure(exc):
            logger.error("the gateway failed to start", exc_info=exc)
    if failure is not None:
        # Sent outside the handler: a server that raises on it (hypercorn) then shows its own
        # error alone, not ours chained to it.
        await send({"type": "lifespan.startup.failed", "message": failure})
        return
    replayed = False

    async def lifespan_receive() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return startup_message
        return await receive()

    async def lifespan_send(message: Message) -> None:
        nonlocal app_answered, app_finished
        if message["type"] in ("lifespan.startup.complete", "lifespan.startup.failed"):
            app_answered = True
        elif message["type"] == "lifespan.shutdown.complete":
            app_finished = True
            await shutdown()
        await send(message)

    try:
        await app(scope, lifespan_receive, lifespan_send)
    except Exception:
        if app_answered:  # a real failure of the app's own lifespan, already reported
            await shutdown()
            raise
        # The wrapped app does not speak lifespan: answer for both of us.
        logger.debug("wrapped app does not support lifespan", exc_info=True)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await shutdown()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if not app_finished:
        await shutdown()


def expected_failure(exc: Exception) -> bool:
    """A store that cannot be reached or used, or a configuration the gateway refuses: the
    operator's to fix, said in one line. Anything else is a fault of the gateway's own, whose
    traceback is worth logging."""
    return isinstance(exc, (StoreUnavailable, ConfigurationError))


def start_failure(exc: Exception) -> str:
    """The one line that says why the gateway could not start."""
    if expected_failure(exc):
        return " ".join(str(exc).split())
    return " ".join(f"the gateway failed to start: {type(exc).__name__}: {exc}".split())


class StartFailures:
    """A gateway that starts on its first request (the server sends no lifespan events) and
    cannot: each request answers 503 ``gateway_not_started`` and tries again; the reason is
    logged once per 10 s, not once per request."""

    def __init__(self) -> None:
        self._logged = -math.inf

    def answer(self, exc: Exception) -> Problem:
        now = time.monotonic()
        if now - self._logged >= 10.0:
            self._logged = now
            trace = None if expected_failure(exc) else exc
            logger.error("the gateway could not start: %s", start_failure(exc), exc_info=trace)
        # An outage may pass by the next request (Retry-After); a configuration error stays.
        return problems.gateway_not_started(transient=isinstance(exc, StoreUnavailable))


class FinalFlush:
    """Made when a request starts the gateway (the server sends no lifespan events): flushes
    usage, and shuts the gateway down, when the process ends. Three ways it may end:

    - a signal (SIGTERM, SIGINT): the usage is flushed first, then the server's own handler
      runs (uvicorn then exits, re-raising the signal, as soon as its last request is
      answered: nothing after that would run). From then on, ``exiting`` is true and the
      gateway flushes after each call it answers, so a call the server lets finish is flushed
      before it is done;
    - the server's main coroutine returns under ``asyncio.run``, which cancels every task left
      and lets them finish on the loop: the watcher task is one, and shuts the gateway down;
    - the server stops its loop and leaves it so (daphne: Twisted's reactor stops it,
      cancelling nothing): at the interpreter's exit, ``atexit`` ends the watcher on it.

    ``disarm()`` (from the gateway's shutdown) stands them all down."""

    def __init__(self, flush: Step, shutdown: Step) -> None:
        self._flush = flush
        self._shutdown = shutdown
        self._armed = True
        self.exiting = False
        self._loop = asyncio.get_running_loop()
        self._watcher = self._loop.create_task(self._watch(), name="tenant_gateway.final_flush")
        atexit.register(self._at_exit)
        self._handlers: dict[int, Handler] = {}
        if threading.current_thread() is threading.main_thread():  # signals are set there only
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN and previous is not None:
                    self._handlers[sig] = previous
                    signal.signal(sig, self._on_signal)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self._loop.is_closed():  # nothing left to flush on
            self._pass_on(sig, frame)
        else:
            asyncio.run_coroutine_threadsafe(self._flush_then_pass_on(sig), self._loop)

    async def _flush_then_pass_on(self, sig: int) -> None:
        self.exiting = True
        await self.flush()
        self._pass_on(sig, None)

    async def flush(self) -> None:
        """Flush now (once the process is ``exiting``, after each call): a failure is logged,
        never raised into the call that happened to be last."""
        try:
            await self._flush()
        except Exception:
            logger.exception("usage could not be flushed as the process ends")

    def _pass_on(self, sig: int, frame: FrameType | None) -> None:
        previous = self._handlers.get(sig)
        if callable(previous):
            previous(sig, frame)
        else:  # the default action (the process ends), now that the usage is safe
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def _watch(self) -> None:
        try:
            await self._loop.create_future()  # never set: only its cancellation ends it
        except asyncio.CancelledError:
            if self._armed:
                self._armed = False
                await self._shutdown()
            raise

    def disarm(self) -> None:
        self._armed = False
        atexit.unregister(self._at_exit)
        if self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._handlers.items():
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, previous)

    def _at_exit(self) -> None:
        if not self._armed or self._watcher.done():
            return
        if self._loop.is_closed() or self._loop.is_running():
            logger.error(
                "the process exits and its event loop cannot run the gateway's shutdown:"
                " the usage of the last flush interval is lost"
            )
            return
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._watcher)
