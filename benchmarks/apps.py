"""The ASGI apps ``run.py`` serves, as uvicorn ``--factory`` callables.

Configuration comes from environment variables that ``run.py`` sets for each server process:

    TG_BENCH_DATABASE_URL    PostgreSQL URL for the gateway (unset → embedded memory store)
    TG_BENCH_REDIS_URL       Redis URL for the gateway (unset → embedded memory store)
    TG_BENCH_REDIS_PREFIX    key prefix in Redis, unique per benchmark run
    TG_BENCH_SLOWAPI_LIMIT   (S) the slowapi limit string (default "1000000/minute")
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_gateway import TenantGateway

__all__ = [
    "BENCH_PLANS",
    "HITS_PATH",
    "SLOWAPI_REDIS_URL",
    "api_key_of",
    "bare_app",
    "floor_app",
    "gateway_app",
    "slowapi_app",
]

HITS_PATH = "/bench/hits"
SLOWAPI_REDIS_URL = "redis://127.0.0.1:6379/13"
SLOWAPI_LIMIT = "1000000/minute"  # never refuses at the rates one worker reaches
"""How many ping calls this process's app has answered; a public (unmetered) path."""

# Shaped like the default plans, with limits no benchmark reaches (the enterprise plan's
# 1,000/s would throttle wrk): "bench" like enterprise — a burst limit, no monthly quota;
# "bench_quota" like free and professional — a burst limit and a finite monthly quota. So every
# call takes the burst limit, and on "bench_quota" the exact quota decision too.
BENCH_PLANS: dict[str, Any] = {
    "plans": {
        "bench": {
            "max_users": None,
            "monthly_calls": None,
            "burst_per_second": 1_000_000_000,
            "price_cents": 0,
        },
        "bench_quota": {
            "max_users": None,
            "monthly_calls": 1_000_000_000,
            "burst_per_second": 1_000_000_000,
            "price_cents": 0,
        },
    }
}


def bare_app() -> Starlette:
    """(A) The baseline: one JSON route, no gateway (plus the hit counter ``run.py`` reads)."""
    served = [0]

    async def ping(request: Request) -> JSONResponse:
        served[0] += 1
        return JSONResponse({"status": "ok"})

    async def hits(request: Request) -> JSONResponse:
        return JSONResponse({"ping": served[0]})

    return Starlette(
        routes=[
            Route("/api/v1/ping", ping, methods=["GET"]),
            Route(HITS_PATH, hits, methods=["GET"]),
        ]
    )


_FLOOR_HEADERS = [
    (b"ratelimit-policy", b'"burst";q=1000000000;w=1, "monthly";q=1000000000'),
    (b"ratelimit", b'"monthly";r=999999999;t=2592000'),
]


def floor_app() -> ASGIApp:
    """(F) The least any gateway does: a pure-ASGI middleware that reads the key header, counts
    the call per key in a dict, and adds the two rate-limit headers (constant values, as long
    as the gateway's). No tenant, no limit, no usage report: the cost of being a middleware
    that answers with two more headers, which no gateway can go below."""
    app = bare_app()
    calls: dict[bytes, int] = {}

    async def floor(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HITS_PATH:
            await app(scope, receive, send)
            return
        key = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                key = value
        calls[key] = calls.get(key, 0) + 1

        def with_headers(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *_FLOOR_HEADERS]
            return send(message)

        await app(scope, receive, with_headers)

    return floor


def gateway_app() -> TenantGateway:
    """(M) / (R) The same app behind the gateway; stores chosen by the environment."""
    return TenantGateway(
        bare_app(),
        database_url=os.environ.get("TG_BENCH_DATABASE_URL") or None,
        redis_url=os.environ.get("TG_BENCH_REDIS_URL") or None,
        redis_key_prefix=os.environ.get("TG_BENCH_REDIS_PREFIX", "tgbench:"),
        plans=BENCH_PLANS,
        public_paths=(HITS_PATH,),
    )


def api_key_of(request: Request) -> str:
    """slowapi's ``key_func`` for (S): the caller's key, like the gateway reads it."""
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key", "").strip() or "anonymous"


def slowapi_app() -> Starlette:
    """(S) The same app behind slowapi: ``SlowAPIMiddleware`` applying a default limit to every
    route, counted in Redis per API key (fixed window, slowapi's default strategy).

    The limit is far above what one worker serves, so it never refuses: this measures the cost
    of counting, which is what the gateway's quota path is compared with. As slowapi documents
    for Starlette: ``app.state.limiter``, the ``RateLimitExceeded`` handler, the middleware.
    """
    # Optional (``pip install slowapi``); the ignores keep mypy quiet where it is not installed.
    from slowapi import Limiter, _rate_limit_exceeded_handler  # type: ignore[import-not-found,unused-ignore]
    from slowapi.errors import RateLimitExceeded  # type: ignore[import-not-found,unused-ignore]
    from slowapi.middleware import SlowAPIMiddleware  # type: ignore[import-not-found,unused-ignore]

    limiter = Limiter(
        key_func=api_key_of,
        default_limits=[os.environ.get("TG_BENCH_SLOWAPI_LIMIT") or SLOWAPI_LIMIT],
        storage_uri=os.environ.get("TG_BENCH_REDIS_URL") or SLOWAPI_REDIS_URL,
        key_prefix=os.environ.get("TG_BENCH_REDIS_PREFIX", "tgbench:"),
    )
    app = bare_app()
    app.state.limiter = limiter
    # slowapi's handler is typed for its own exception, not Exception.
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type,unused-ignore]
    app.add_middleware(SlowAPIMiddleware)
    return app
