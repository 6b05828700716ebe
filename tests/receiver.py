"""A real HTTP webhook receiver on loopback, served by uvicorn inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class WebhookReceiver:
    def __init__(self, *, hang: bool = False, fail_first: int = 0) -> None:
        """``hang``: every delivery waits, unanswered, until the test calls ``release()``."""
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        self._released = asyncio.Event()
        if not hang:
            self._released.set()
        self._fail_first = fail_first
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[Any] | None = None

    async def _hook(self, request: Request) -> Response:
        self.attempts += 1
        await self._released.wait()
        if self.attempts <= self._fail_first:
            return Response(status_code=500)
        self.deliveries.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    def release(self) -> None:
        self._released.set()

    async def __aenter__(self) -> WebhookReceiver:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        self._server.should_exit = True
        self._server.force_exit = True
        if self._task is not None:
            await self._task
