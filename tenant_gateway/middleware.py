"""``TenantGateway``: the pure-ASGI middleware (docs/embedding.md).

For each HTTP or websocket request to the wrapped app:
key → tenant (cached) → role → body size → burst limit → monthly quota (one atomic counter
round trip) → the tenant exposed downstream → rate-limit headers added → route, status and
refunds tallied after the response. Paths under ``admin_prefix`` go to the admin sub-app;
``public_paths`` pass unauthenticated and unmetered; other scope types pass straight through.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.admin.app import build_admin_app
from tenant_gateway.admin.auth import OperatorAuth
from tenant_gateway.client_limits import client_address
from tenant_gateway.clock import Clock, Sleep, system_clock
from tenant_gateway.context import current_database, current_tenant
from tenant_gateway.events import QuotaHook
from tenant_gateway.exceptions import (
    ConfigurationError,
    Problem,
    Refusal,
    StoreUnavailable,
    TooManyAttempts,
)
from tenant_gateway.exchange import BodyTooLarge, Exchange, refuse, refuse_unread, scan_headers
from tenant_gateway.headers import declared_over
from tenant_gateway.lifespan import FinalFlush, StartFailures, relay
from tenant_gateway.metering import Meter
from tenant_gateway.metrics import MetricsEndpoint, Sources
from tenant_gateway.models import Tenant
from tenant_gateway.observations import GateCounts
from tenant_gateway.plans import PlanCatalog, load_plans
from tenant_gateway.ratelimit import BurstLimiter
from tenant_gateway.services import Services
from tenant_gateway.settings import Settings
from tenant_gateway.tracing import note_refusal, traced
from tenant_gateway.usage import RouteOf

__all__ = ["TenantGateway"]

logger = logging.getLogger("tenant_gateway")

_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")


class TenantGateway:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        plans: PlanCatalog | str | Path | Mapping[str, Any] | None = None,
        admin_prefix: str = "/api/v1/tenants",
        admin_jwt_secret: str | None = None,
        admin_jwt_public_key: str | None = None,
        admin_jwt_audience: str | None = None,
        admin_jwt_issuer: str | None = None,
        admin_jwt_max_lifetime: float | None = 24 * 3600.0,
        public_paths: Sequence[str] = (),
        max_body_bytes: int = 10 * 1024 * 1024,
        admin_max_body_bytes: int = 1024 * 1024,
        allow_signup: bool = True,
        signup_rate: str | None = "10/minute",
        signup_plans: Sequence[str] | None = None,
        auth_failure_rate: str | None = "30/minute",
        plan_change_rate: str | None = "10/hour",
        redis_key_prefix: str = "tg:",
        burst_storage: str = "async+memory://",
        key_cache_ttl: float = 1.0,
        key_cache_long_ttl: float = 60.0,
        key_cache_size: int = 100_000,
        usage_flush_interval: float = 1.0,
        on_quota_threshold: QuotaHook | None = None,
        webhook_allowed_networks: Sequence[str] = (),
        webhook_attempt_timeout: float = 10.0,
        redis_fail_mode: str = "closed",
        health_paths: tuple[str, str] | None = ("/healthz", "/readyz"),
        metrics_path: str | None = None,
        metrics_require_operator: bool = False,
        tracer_provider: object | None = None,
        route_of: RouteOf | None = None,
        admin_timeout: float = 10.0,
        transfer_concurrency: int = 2,
        transfer_idle_timeout: float = 10.0,
        transfer_min_rate: int = 1024,
        transfer_max_duration: float = 3600.0,
        admin_tenant_concurrency: int = 4,
        console_path: str | None = "/console",
        console_secret: str | None = None,
        clock: Clock = system_clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Configured by the keyword arguments, or by ``settings`` (the same options as one
        object, ``Settings``) with none of them given."""
        options = Settings(
            database_url=database_url,
            redis_url=redis_url,
            plans=load_plans(plans),
            admin_prefix=admin_prefix,
            admin_jwt_secret=admin_jwt_secret,
            admin_jwt_public_key=admin_jwt_public_key,
            admin_jwt_audience=admin_jwt_audience,
            admin_jwt_issuer=admin_jwt_issuer,
            admin_jwt_max_lifetime=admin_jwt_max_lifetime,
            public_paths=frozenset(public_paths),
            max_body_bytes=max_body_bytes,
            admin_max_body_bytes=admin_max_body_bytes,
            allow_signup=allow_signup,
            signup_rate=signup_rate,
            signup_plans=None if signup_plans is None else frozenset(signup_plans),
            auth_failure_rate=auth_failure_rate,
            plan_change_rate=plan_change_rate,
            redis_key_prefix=redis_key_prefix,
            burst_storage=burst_storage,
            key_cache_ttl=key_cache_ttl,
            key_cache_long_ttl=key_cache_long_ttl,
            key_cache_size=key_cache_size,
            usage_flush_interval=usage_flush_interval,
            on_quota_threshold=on_quota_threshold,
            webhook_allowed_networks=tuple(webhook_allowed_networks),
            webhook_attempt_timeout=webhook_attempt_timeout,
            redis_fail_mode=redis_fail_mode,
            health_paths=health_paths,
            metrics_path=metrics_path,
            metrics_require_operator=metrics_require_operator,
            tracer_provider=tracer_provider,
            route_of=route_of,
            admin_timeout=admin_timeout,
            transfer_concurrency=transfer_concurrency,
            transfer_idle_timeout=transfer_idle_timeout,
            transfer_min_rate=transfer_min_rate,
            transfer_max_duration=transfer_max_duration,
            admin_tenant_concurrency=admin_tenant_concurrency,
            console_path=console_path,
            console_secret=console_secret,
            clock=clock,
            sleep=sleep,
        )
        if settings is None:
            settings = options
        elif options != Settings():
            raise ConfigurationError("give either settings= or keyword options, not both")
        self.app = app
        self._configure(settings)

    def _configure(self, settings: Settings) -> None:
        self.settings = settings
        self.liveness_path, self.readiness_path = settings.health_paths or ("", "")
        self.admin_prefix = settings.admin_prefix
        self._admin_subpaths = settings.admin_prefix + "/"
        self.public_paths = frozenset(p for p in settings.public_paths if not p.endswith("*"))
        self._public_prefixes = tuple(p[:-1] for p in settings.public_paths if p.endswith("*"))
        self._route_of = settings.route_of
        self.max_body_bytes = settings.max_body_bytes
        operators = OperatorAuth.configured(settings)
        self.services = Services.create(settings)
        self.meter = Meter(
            self.services.counters,
            BurstLimiter(settings.burst_storage, settings.clock),
            self.services.events,
            settings.clock,
            settings.plans,
            self.services.recorder,
            settings.redis_fail_mode,
        )
        self._plans = dict(settings.plans)  # a plain dict: the hot path's lookup
        self.gate_counts = GateCounts(self._plans)
        self._admitted = self.gate_counts.admitted
        self.metrics_path = settings.metrics_path or ""
        self.metrics = MetricsEndpoint(
            Sources(self.gate_counts, self.meter.decisions, self.services),
            operators if settings.metrics_require_operator else None,
            settings.usage_flush_interval,
        )
        self.admin_app = build_admin_app(self.services, operators)
        self._enter_gate: ASGIApp = self._gate  # each in its span once started, if traced
        self._enter_admin: ASGIApp = self.admin_app
        self._started = False
        self._start_lock = asyncio.Lock()
        self._final_flush: FinalFlush | None = None
        self._told_no_lifespan = False
        self._outage_logged: dict[str, float] = {}
        self._start_failures = StartFailures()

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open pools, apply migrations, start the background work. Idempotent."""
        async with self._start_lock:
            if not self._started:
                await self.services.start()
                self.metrics.start()
                self._enter_gate, self._enter_admin = traced(
                    self._gate, self.admin_app, self.settings.tracer_provider, self.admin_prefix
                )
                self._started = True

    async def shutdown(self) -> None:
        """Flush everything batched in memory and close every connection. Idempotent."""
        async with self._start_lock:
            if self._started:
                self._started = False
                if self._final_flush is not None:
                    self._final_flush.disarm()
                    self._final_flush = None
                await self.services.stop()
                await self.metrics.stop()

    async def _start_without_lifespan(self) -> None:
        """A request before any lifespan start-up: the server sends no lifespan events. Start
        now, and stop (flushing usage) when the process ends."""
        await self.startup()
        if self._final_flush is None and self._started:
            self._final_flush = FinalFlush(self.flush, self.shutdown)
            if not self._told_no_lifespan:
                self._told_no_lifespan = True
                logger.warning(
                    "the server sends no lifespan events: the gateway started on the first"
                    " request and flushes usage when the process exits"
                )

    async def flush(self) -> None:
        """Write what is batched in memory now (the background loop does it every interval)."""
        await self.services.flush()

    # -- requests ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await relay(self.app, self.startup, self.shutdown, scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._started:
            try:
                await self._start_without_lifespan()
            except Exception as exc:  # 503; the next request tries again
                await refuse(self._start_failures.answer(exc), scope, receive, send)
                return
        path: str = scope["path"]
        if path == self.admin_prefix or path.startswith(self._admin_subpaths):
            await self._enter_admin(scope, receive, send)
        elif path == self.liveness_path and scope["type"] == "http":
            await JSONResponse({"status": "ok"})(scope, receive, send)
        elif path == self.readiness_path and scope["type"] == "http":
            await self._ready(scope, receive, send)
        elif path == self.metrics_path and scope["type"] == "http":
            await self.metrics(scope, receive, send)
        elif path in self.public_paths or (self._public_prefixes and self._public_prefix(path)):
            await self.app(scope, receive, send)
        else:
            await self._enter_gate(scope, receive, send)

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 when every configured store answers, else 503 problem+json listing each."""
        checks = await self.services.readiness()
        if all(state == "ok" for state in checks.values()):
            await JSONResponse({"status": "ready", "checks": checks})(scope, receive, send)
            return
        problem = Problem(
            503,
            "not_ready",
            "Not ready",
            "A backing store is unreachable.",
            headers={"Retry-After": "1"},
            extensions={"checks": checks},
        )
        await problems.problem_response(problem)(scope, receive, send)

    def _public_prefix(self, path: str) -> bool:
        """Under a public prefix, with no ``.`` or ``..`` segment: an app or proxy that
        resolves them would serve ``/docs/../private`` as ``/private``."""
        return path.startswith(self._public_prefixes) and _DOT_SEGMENT.search(path) is None

    def _framed(self, length: str | None, encoded: bool) -> bool:
        """Whether the server frames the body by its Content-Length, so it needs no counting
        as it streams in: not when a Transfer-Encoding is declared too (a server that accepts
        both frames by the encoding and ignores the length). Raises 413 for a declared length
        over the limit, however many digits it has."""
        if declared_over(length, self.max_body_bytes):
            raise problems.payload_too_large(self.max_body_bytes)
        return length is not None and length.isdigit() and not encoded

    def _counted(self, problem: Problem, reason: str, tenant: Tenant | None) -> Problem:
        """A refusal, counted by reason and plan (and noted on the gate's span)."""
        note_refusal(reason, tenant, self.gate_counts.refuse(reason, tenant))
        return problem

    def _log_outage(self, exc: StoreUnavailable) -> None:
        """One warning per store per 10 s, not one per refused request (an outage under load
        would otherwise flood the log; the breaker logs its own transitions)."""
        now = time.monotonic()
        if now - self._outage_logged.get(exc.store, -math.inf) >= 10.0:
            self._outage_logged[exc.store] = now
            logger.warning("refusing requests: %s", exc)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Authenticate and meter, or refuse. Written inline, with no coroutine for the steps
        # that need no I/O (a warm key, a plan without limits): each level of coroutine costs
        # as much as a step.
        tenant: Tenant | None = None
        try:
            raw_key, length, encoded = scan_headers(scope)
            if raw_key is None:
                raise problems.missing_api_key()
            resolver = self.services.resolver
            principal = resolver.cached(raw_key) or await resolver.resolve(
                raw_key, client_address(scope)
            )
            tenant = principal.tenant
            if not principal.may_call_api:
                raise problems.forbidden(f"A {principal.key.role.value} key may not call the API.")
            plan = self._plans.get(tenant.plan)
            if plan is None:
                raise problems.plan_not_configured(tenant.plan)
            # Most calls have no body (HTTP/1, neither header): decided here without a call.
            bodiless = length is None and not encoded and scope.get("http_version", "1.1") < "2"
            unframed = not bodiless and not self._framed(length, encoded)
            meter = self.meter
            metered = meter.admit_locally(tenant, plan) or await meter.admit(tenant, plan)
        except Problem as problem:
            await refuse(self._counted(problem, problem.code, tenant), scope, receive, send)
            return
        except Refusal as refusal:
            reason = "failed_auth_limit" if isinstance(refusal, TooManyAttempts) else ""
            answer = problems.for_refusal(refusal)
            await refuse(self._counted(answer, reason or answer.code, tenant), scope, receive, send)
            return
        except StoreUnavailable as exc:
            self._log_outage(exc)
            unavailable = (
                problems.quota_unavailable()
                if exc.store == "Redis"
                else problems.service_unavailable("The tenant directory is unavailable.")
            )
            counted = self._counted(unavailable, unavailable.code, tenant)
            await refuse(counted, scope, receive, send)
            return
        self._admitted[plan.name] += 1

        state = scope.get("state")
        if state is None:
            scope["state"] = {"tenant": tenant}
        else:
            state["tenant"] = tenant
        exchange = Exchange(send, metered.headers, receive, self.max_body_bytes)
        app_receive = exchange.receive if unframed and scope["type"] == "http" else receive
        root_path = scope.get("root_path", "")  # before the app's router extends it
        tenant_token = current_tenant.set(tenant)
        database = self.services.database
        database_token = None if database is None else current_database.set(database)
        try:
            await self.app(scope, app_receive, exchange.send)
        except BodyTooLarge:
            pass
        except Exception:
            if not exchange.overflow:
                raise
        finally:
            current_tenant.reset(tenant_token)
            if database_token is not None:
                current_database.reset(database_token)
            status = 413 if exchange.overflow else exchange.status
            recorder = self.services.recorder
            recorder.record(metered.usage_key, scope, root_path, status, self._route_of)
            if status >= 500 and not plan.count_server_errors:
                recorder.refund(metered.usage_key, metered.day)
        if exchange.overflow and not exchange.started:
            too_large = problems.payload_too_large(self.max_body_bytes)
            if exchange.body_left:
                await refuse_unread(too_large, scope, receive, send)
            else:
                await refuse(too_large, scope, receive, send)
        final = self._final_flush
        if final is not None and final.exiting:  # the server may end the process next
            await final.flush()
