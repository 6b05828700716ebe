"""OpenTelemetry spans for the gate and the admin API, when ``opentelemetry-api`` is installed
(the ``otel`` extra).

One span per metered request, ``tenant_gateway.gate``, current while the wrapped app answers
(the app's own spans are its children), with the tenant, the plan, the outcome (``admitted`` or
``refused`` and the refusal's reason) and the response status; one span per admin request,
named by its route (``PUT /api/v1/tenants/{tenant_id}/plan``), with the tenant it acts on. Both
are ``INTERNAL``: the server span, if any, is the ASGI instrumentation's.

The tracer provider is the one given (``tracer_provider=``) or the global one as the gateway
starts (its lifespan start-up, or its first request): configure the SDK before. Without the
package, or with the API alone and no provider set, the middleware calls the gate and the admin
app directly and nothing here runs. A provider that records nothing (a sampler that drops the
request) costs one ``start_span`` that answers a non-recording span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_gateway.models import Tenant

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, StatusCode, Tracer
except ImportError:  # the otel extra is not installed: no spans, no cost
    trace = None  # type: ignore[assignment]

__all__ = ["ADMIN_SPAN", "GATE_SPAN", "note_refusal", "traced"]

GATE_SPAN = "tenant_gateway.gate"
ADMIN_SPAN = "tenant_gateway.admin"
TENANT = "tenant_gateway.tenant_id"
PLAN = "tenant_gateway.plan"
OUTCOME = "tenant_gateway.outcome"
REASON = "tenant_gateway.refusal"


def traced(
    gate: ASGIApp, admin: ASGIApp, provider: Any, admin_prefix: str
) -> tuple[ASGIApp, ASGIApp]:
    """The gate and the admin app, each in its span when there is a tracer provider, else as
    they are. ``provider``: a ``TracerProvider``; None: the global one, if one is set by now
    (the API alone, with no SDK, has none: a span per request would cost for nothing)."""
    if trace is None:
        return gate, admin
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return gate, admin
    tracer = trace.get_tracer("tenant_gateway", tracer_provider=provider)
    return _gate_in_span(gate, tracer), _admin_in_span(admin, tracer, admin_prefix)


def note_refusal(reason: str, tenant: Tenant | None, plan: str) -> None:
    """On the current gate span, if one records: the call was refused, and why."""
    if trace is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({OUTCOME: "refused", REASON: reason, PLAN: plan})
        if tenant is not None:
            span.set_attribute(TENANT, tenant.id)


def _noting_status(send: Send, span: Span) -> Callable[[Message], Awaitable[None]]:
    async def send_noted(message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
        await send(message)

    return send_noted


def _gate_in_span(gate: ASGIApp, tracer: Tracer) -> ASGIApp:
    async def gate_in_span(scope: Scope, receive: Receive, send: Send) -> None:
        span = tracer.start_span(GATE_SPAN)
        if not span.is_recording():  # no SDK: nothing to note
            await gate(scope, receive, send)
            return
        with trace.use_span(span, end_on_exit=True):
            try:
                await gate(scope, receive, _noting_status(send, span))
            finally:
                tenant = (scope.get("state") or {}).get("tenant")  # set once admitted
                if tenant is not None:
                    span.set_attributes({TENANT: tenant.id, PLAN: tenant.plan, OUTCOME: "admitted"})

    return gate_in_span


def _admin_in_span(admin: ASGIApp, tracer: Tracer, prefix: str) -> ASGIApp:
    async def admin_in_span(scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "WS")
        span = tracer.start_span(ADMIN_SPAN, attributes={"http.request.method": method})
        if not span.is_recording():
            await admin(scope, receive, send)
            return
        with trace.use_span(span, end_on_exit=True):
            try:
                await admin(scope, receive, _noting_status(send, span))
            finally:
                # The admin app's router leaves the route it matched in the scope.
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.set_attribute("http.route", prefix + route)
                    span.update_name(f"{method} {prefix}{route}")
                tenant_id = (scope.get("path_params") or {}).get("tenant_id")
                if isinstance(tenant_id, str):
                    span.set_attribute(TENANT, tenant_id)

    return admin_in_span
