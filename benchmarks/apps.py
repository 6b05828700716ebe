"""The ASGI apps ``run.py`` serves, as uvicorn ``--factory`` callables.

Configuration comes from environment variables that ``run.py`` sets for each server process:

    TG_BENCH_DATABASE_URL    PostgreSQL URL for the gateway (unset → embedded memory store)
    TG_BENCH_REDIS_URL       Redis URL for the gateway (unset → embedded memory store)
    TG_BENCH_REDIS_PREFIX    key prefix in Redis, unique per benchmark run
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tenant_gateway import TenantGateway

__all__ = ["BENCH_PLANS", "HITS_PATH", "bare_app", "gateway_app"]

HITS_PATH = "/bench/hits"
"""How many ping calls this process's app has answered; a public (unmetered) path."""

# "bench" has no burst limit (the default enterprise plan's 1,000/s would throttle wrk) and no
# monthly quota; "bench_quota" has a large finite quota, so every call takes the exact quota path.
BENCH_PLANS: dict[str, Any] = {
    "plans": {
        "bench": {
            "max_users": None,
            "monthly_calls": None,
            "burst_per_second": None,
            "price_cents": 0,
        },
        "bench_quota": {
            "max_users": None,
            "monthly_calls": 1_000_000_000,
            "burst_per_second": None,
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
