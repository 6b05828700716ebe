"""How long an admin request may run, and how many of one tenant's may run at once.

``Deadline`` wraps the admin app: a request that neither answers nor lifts its deadline within
the timeout is answered 503 (a wedged store must not hold connections forever); it also tells
``TenantAdmission`` when each request's task ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.exceptions import ConfigurationError

__all__ = ["Deadline", "TenantAdmission", "lift_deadline"]

_DEADLINE = "tenant_gateway.deadline"
_ON_END = "tenant_gateway.on_end"


def lift_deadline(request: Request) -> None:
    """Take this request out of the admin deadline: it bounds each of its waits itself (a
    transfer: on its client by the idle timeout, on the store by the statement timeout)."""
    lifted = request.scope.get(_DEADLINE)
    if isinstance(lifted, asyncio.Event):
        lifted.set()


class Deadline:
    """Answer 503 when an admin request takes longer than ``timeout`` seconds (a wedged store
    must not hold connections forever). Responses, once started, run to the end; so do
    requests that lift their deadline (``lift_deadline``)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        scope[_DEADLINE] = lifted = asyncio.Event()
        on_end: list[Callable[[], None]] = []
        scope[_ON_END] = on_end

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, tracking_send))
        task.add_done_callback(lambda _: [end() for end in on_end])  # however it ends
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if done:
            task.result()
            return
        if started or lifted.is_set():  # a response or a transfer under way: let it finish
            await task
            return
        task.cancel()  # its clean-up (a rollback on a wedged connection) may hang: don't wait
        await asyncio.wait({task}, timeout=0.1)
        problem = problems.service_unavailable(f"The request took longer than {self.timeout} s.")
        await problems.problem_response(problem)(scope, receive, send)


class TenantAdmission:
    """At most ``limit`` admin requests of one tenant at a time in this process (operators'
    are not counted): whatever makes them slow, such as a row its own import holds locked, a
    tenant cannot hold more than that many of the shared pool's connections through the admin
    API. A request counts until its handler's task ends (``Deadline`` runs ``_ON_END``)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigurationError("admin_tenant_concurrency must be at least 1")
        self.limit = limit
        self._running: dict[str, int] = {}

    def admit(self, scope: Scope, tenant_id: str) -> None:
        on_end = scope.get(_ON_END)
        if on_end is None:  # not under Deadline: nothing would count it out
            return
        running = self._running.get(tenant_id, 0)
        if running >= self.limit:
            raise problems.concurrent_requests(self.limit)
        self._running[tenant_id] = running + 1
        on_end.append(lambda: self._leave(tenant_id))

    def _leave(self, tenant_id: str) -> None:
        running = self._running.pop(tenant_id) - 1
        if running:
            self._running[tenant_id] = running
