"""``TenantGateway``: the pure-ASGI middleware (SPEC §1).

For each HTTP or websocket request to the wrapped app:
key → tenant (cached) → burst limit → monthly quota (one atomic counter round trip)
→ tenant exposed downstream → rate-limit headers added → route and status tallied after
the response. Paths under ``admin_prefix`` go to the admin sub-app; ``public_paths`` pass
unauthenticated and unmetered; other scope types pass straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.admin.app import build_admin_app
from tenant_gateway.admin.auth import ROLE_ACTIONS, Action, OperatorAuth
from tenant_gateway.clock import Clock, Period, system_clock
from tenant_gateway.context import current_database, current_tenant
from tenant_gateway.directory import MemoryDirectory, TenantDirectory
from tenant_gateway.exceptions import ConfigurationError, Problem, StoreUnavailable
from tenant_gateway.headers import policy_header, remaining_header
from tenant_gateway.keys import extract_api_key
from tenant_gateway.models import Tenant
from tenant_gateway.plans import Plan, load_plans
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.propagation import Invalidator, RedisInvalidator
from tenant_gateway.quota import CounterStore, MemoryCounters, RedisCounters
from tenant_gateway.ratelimit import BurstLimiter
from tenant_gateway.resolver import KeyResolver, Principal
from tenant_gateway.services import Services
from tenant_gateway.usage import UsageRecorder

__all__ = ["TenantGateway"]

logger = logging.getLogger("tenant_gateway")

_UNMATCHED_ROUTE = "(unmatched)"


class _BodyTooLarge(Exception):
    """Raised from the wrapped ``receive`` when a streamed body passes the limit."""


def route_template(scope: Scope, root_path: str) -> str:
    """``GET /api/v1/projects/{id}``: the template of the route the app matched, not the path."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return f"{scope.get('method', 'WS')} {_UNMATCHED_ROUTE}"
    mount_prefix = scope.get("root_path", "")[len(root_path) :]
    return f"{scope.get('method', 'WS')} {mount_prefix}{template}"


class TenantGateway:
    def __init__(
        self,
        app: ASGIApp,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        plans: str | Path | Mapping[str, Any] | None = None,
        admin_prefix: str = "/api/v1/tenants",
        admin_jwt_secret: str | None = None,
        admin_jwt_public_key: str | None = None,
        admin_jwt_audience: str | None = None,
        admin_jwt_issuer: str | None = None,
        public_paths: Sequence[str] = (),
        max_body_bytes: int = 10 * 1024 * 1024,
        admin_max_body_bytes: int = 1024 * 1024,
        allow_signup: bool = True,
        redis_key_prefix: str = "tg:",
        burst_storage: str = "async+memory://",
        key_cache_ttl: float = 1.0,
        key_cache_size: int = 100_000,
        usage_flush_interval: float = 1.0,
        clock: Clock = system_clock,
    ) -> None:
        if not admin_prefix.startswith("/") or admin_prefix.endswith("/"):
            raise ConfigurationError("admin_prefix must start with '/' and not end with '/'")
        if max_body_bytes < 0 or admin_max_body_bytes < 0:
            raise ConfigurationError("body limits must be non-negative")
        self.app = app
        self.admin_prefix = admin_prefix
        self.public_paths = frozenset(public_paths)
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.database = Database(database_url) if database_url else None
        directory: TenantDirectory = (
            PostgresDirectory(self.database) if self.database else MemoryDirectory()
        )
        counters: CounterStore = (
            RedisCounters(redis_url, key_prefix=redis_key_prefix) if redis_url else MemoryCounters()
        )
        resolver = KeyResolver(directory, clock, ttl=key_cache_ttl, max_entries=key_cache_size)
        invalidator = (
            RedisInvalidator(resolver, redis_url, channel=f"{redis_key_prefix}invalidate")
            if redis_url
            else Invalidator(resolver)
        )
        operators = (
            OperatorAuth(
                secret=admin_jwt_secret,
                public_key=admin_jwt_public_key,
                audience=admin_jwt_audience,
                issuer=admin_jwt_issuer,
            )
            if admin_jwt_secret or admin_jwt_public_key
            else None
        )
        self.services = Services(
            plans=load_plans(plans),
            directory=directory,
            counters=counters,
            recorder=UsageRecorder(counters, interval=usage_flush_interval),
            resolver=resolver,
            invalidator=invalidator,
            clock=clock,
            operators=operators,
            allow_signup=allow_signup,
            max_body_bytes=admin_max_body_bytes,
        )
        self.flush_interval = usage_flush_interval
        self.burst = BurstLimiter(burst_storage, clock)
        self.admin_app = build_admin_app(self.services, admin_prefix)
        self._started = False
        self._start_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open pools, apply migrations, start the usage flusher. Idempotent."""
        async with self._start_lock:
            if self._started:
                return
            await self.services.directory.start()
            await self.services.counters.ping()
            self._tasks = [
                asyncio.create_task(self._flush_forever()),
                asyncio.create_task(self.services.invalidator.run()),
            ]
            self._started = True

    async def shutdown(self) -> None:
        """Flush pending usage and close every connection."""
        async with self._start_lock:
            if not self._started:
                return
            self._started = False
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            try:
                await self.flush()
            except StoreUnavailable as exc:
                logger.error("usage lost at shutdown: %s", exc)
            await self.services.invalidator.close()
            await self.services.counters.close()
            await self.services.directory.close()

    async def flush(self) -> None:
        """Write what is batched in memory: route tallies and key last-use times."""
        await self.services.recorder.flush()
        used = self.services.resolver.drain_last_used()
        await self.services.directory.touch_keys(used)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except StoreUnavailable as exc:
                logger.warning("flush postponed: %s", exc)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start before the wrapped app does, stop after it has; relay every event."""
        app_answered = app_finished = False
        startup_message = await receive()
        try:
            await self.startup()
        except (StoreUnavailable, ConfigurationError) as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
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
                await self.shutdown()
            await send(message)

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        except Exception:
            if app_answered:  # a real failure of the app's own lifespan, already reported
                await self.shutdown()
                raise
            # The wrapped app does not speak lifespan: answer for both of us.
            logger.debug("wrapped app does not support lifespan", exc_info=True)
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await self.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if not app_finished:
            await self.shutdown()

    # -- requests ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._started:
            try:
                await self.startup()
            except StoreUnavailable as exc:
                await _refuse(problems.service_unavailable(str(exc)), scope, receive, send)
                return
        path: str = scope["path"]
        if path == self.admin_prefix or path.startswith(self.admin_prefix + "/"):
            await self.admin_app(scope, receive, send)
        elif path in self.public_paths:
            await self.app(scope, receive, send)
        else:
            await self._gate(scope, receive, send)

    async def _admit(self, scope: Scope) -> tuple[Principal, Plan, list[tuple[bytes, bytes]]]:
        """Authenticate and meter one request; returns the headers to add, or raises Problem."""
        headers = Headers(scope=scope)
        raw_key = extract_api_key(headers)
        if raw_key is None:
            raise problems.missing_api_key()
        principal = await self.services.resolver.resolve(raw_key)
        if Action.CALL_API not in ROLE_ACTIONS[principal.key.role]:
            raise problems.forbidden(f"A {principal.key.role.value} key may not call the API.")
        plan = self.services.plans.get(principal.tenant.plan)
        if plan is None:
            raise problems.service_unavailable(f"plan {principal.tenant.plan!r} is not configured")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise problems.payload_too_large(self.max_body_bytes)
        return principal, plan, await self._meter(principal.tenant, plan)

    async def _meter(self, tenant: Tenant, plan: Plan) -> list[tuple[bytes, bytes]]:
        now = self.clock()
        period = Period.containing(now)
        reset = period.seconds_left(now)
        usage_key = (tenant.id, str(period))
        day = f"{int(now // 86_400) - int(period.start.timestamp() // 86_400) + 1:02d}"
        counters = self.services.counters
        headers = [(b"ratelimit-policy", policy_header(plan))]
        if plan.burst_per_second is not None:
            if not await self.burst.hit(tenant.id, plan.burst_per_second):
                await counters.reject(usage_key, day, "burst")
                stats = await self.burst.stats(tenant.id, plan.burst_per_second)
                raise _with_headers(
                    problems.rate_limited(plan.burst_per_second, stats.retry_after),
                    headers + [(b"ratelimit", remaining_header("burst", 0, stats.retry_after))],
                )
        admission = await counters.admit(usage_key, day, plan.monthly_calls, plan.allows_overage)
        if plan.monthly_calls is not None:
            headers.append(
                (
                    b"ratelimit",
                    remaining_header("monthly", plan.monthly_calls - admission.used, reset),
                )
            )
        elif plan.burst_per_second is not None:
            stats = await self.burst.stats(tenant.id, plan.burst_per_second)
            headers.append((b"ratelimit", remaining_header("burst", stats.remaining, 1)))
        if not admission.admitted:  # only a plan with a monthly limit refuses
            raise _with_headers(problems.quota_exceeded(plan.monthly_calls or 0, reset), headers)
        return headers

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal, plan, extra_headers = await self._admit(scope)
        except Problem as problem:
            await _refuse(problem, scope, receive, send)
            return
        except StoreUnavailable as exc:
            logger.warning("refusing request: %s", exc)
            unavailable = (
                problems.quota_unavailable()
                if "Redis" in exc.store
                else problems.service_unavailable("The tenant directory is unavailable.")
            )
            await _refuse(unavailable, scope, receive, send)
            return

        tenant = principal.tenant
        scope.setdefault("state", {})["tenant"] = tenant
        root_path = scope.get("root_path", "")
        status = 500
        response_started = False
        body_limit = self.max_body_bytes
        received = 0
        overflow = False

        async def limited_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > body_limit:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def metered_send(message: Message) -> None:
            nonlocal status, response_started
            if overflow:
                return  # the 413 below replaces whatever the app tries to say
            if message["type"] in ("http.response.start", "websocket.accept"):
                response_started = True
                status = message.get("status", 101)
                if message["type"] == "http.response.start":
                    message["headers"] = list(message.get("headers", [])) + extra_headers
            await send(message)

        tenant_token = current_tenant.set(tenant)
        database_token = current_database.set(self.database)
        try:
            await self.app(
                scope, limited_receive if scope["type"] == "http" else receive, metered_send
            )
        except _BodyTooLarge:
            pass
        except Exception:
            if not overflow:
                raise
        finally:
            current_tenant.reset(tenant_token)
            current_database.reset(database_token)
            if overflow:
                status = 413
            self.services.recorder.record(
                (tenant.id, str(Period.containing(self.clock()))),
                route_template(scope, root_path),
                status,
            )
        if overflow and not response_started:
            await _refuse(problems.payload_too_large(body_limit), scope, receive, send)


def _with_headers(problem: Problem, headers: list[tuple[bytes, bytes]]) -> Problem:
    for name, value in headers:
        problem.headers[name.decode("latin-1")] = value.decode("latin-1")
    return problem


async def _refuse(problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
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
