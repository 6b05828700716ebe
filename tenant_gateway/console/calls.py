"""The console's one way to read and change anything: the admin API, called in process.

Each call is an ASGI request to the admin sub-app, with the signed-in caller handed over in the
scope (``CALLER_SCOPE_KEY``) instead of a credential. So every rule of the admin API applies as
it is — roles, validation, seat limits, plan-change limits, audit entries, cache invalidation —
and the console shows exactly what the API answers: there is no second source of truth.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Scope

from tenant_gateway.admin.auth import CALLER_SCOPE_KEY, Caller

__all__ = ["AdminCalls", "AdminRefused"]


class AdminRefused(Exception):
    """The admin API answered an error: its status and problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(problem.get("detail", ""))
        self.status = status
        self.problem = problem


class AdminCalls:
    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self._app = app
        self._prefix = prefix

    async def __call__(
        self,
        origin: Scope,
        caller: Caller,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: str = "",
    ) -> Any:
        """The JSON the admin API answers ``method path`` (relative to its prefix) for
        ``caller``, None for a 204; ``AdminRefused`` for an error. ``origin``: the console
        request, whose client address the call carries (the audit log's)."""
        content = b"" if body is None else json.dumps(body).encode()
        full = self._prefix + path
        headers = [(b"content-length", str(len(content)).encode())]
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": origin.get("scheme", "http"),
            "server": origin.get("server"),
            "client": origin.get("client"),
            "path": full,
            "raw_path": full.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": headers,
            "state": {},
            CALLER_SCOPE_KEY: caller,
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": content, "more_body": False}

        status = 500
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self._app(scope, receive, send)
        payload = b"".join(chunks)
        answer = json.loads(payload) if payload else None
        if status >= 400:
            problem = answer if isinstance(answer, dict) else {"detail": "The request failed."}
            raise AdminRefused(status, problem)
        return answer
