"""OpenTelemetry spans (the ``otel`` extra): one per metered request and one per admin request,
read back from the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tenant_gateway import TenantGateway
from tenant_gateway.keys import generate_api_key
from tenant_gateway.tracing import ADMIN_SPAN, GATE_SPAN

from .apps import echo_app
from .conftest import ClientFor, FakeClock, Stores, auth, register

SEVEN = {"plans": {"seven": {"max_users": 5, "monthly_calls": 2, "burst_per_second": None,
                             "price_cents": 0}}}  # fmt: skip


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    yield exported
    exported.shutdown()


def provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


async def test_a_span_per_metered_request_and_admin_request(
    stores: Stores, client_for: ClientFor, clock: FakeClock, exporter: InMemorySpanExporter
) -> None:
    gateway = TenantGateway(
        echo_app(),
        plans=SEVEN,
        clock=clock,
        tracer_provider=provider_for(exporter),
        **stores.kwargs(),
    )
    client = await client_for(gateway)
    tenant = await register(client, plan="seven")
    for _ in range(3):  # two admitted, then the quota
        await client.get("/whoami", headers=auth(tenant))
    await client.get("/whoami")
    await client.get("/fail", headers={"X-API-Key": generate_api_key()})
    await client.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=auth(tenant))
    await client.get("/healthz")  # neither metered nor admin: no span

    spans = exporter.get_finished_spans()
    gate = [attributes(s) for s in spans if s.name == GATE_SPAN]
    assert gate == [
        {
            "http.response.status_code": 200,
            "tenant_gateway.tenant_id": tenant["id"],
            "tenant_gateway.plan": "seven",
            "tenant_gateway.outcome": "admitted",
        }
    ] * 2 + [
        {
            "tenant_gateway.outcome": "refused",
            "tenant_gateway.refusal": "quota_exceeded",
            "tenant_gateway.plan": "seven",
            "tenant_gateway.tenant_id": tenant["id"],
            "http.response.status_code": 429,
        },
        {
            "tenant_gateway.outcome": "refused",
            "tenant_gateway.refusal": "missing_api_key",
            "tenant_gateway.plan": "",
            "http.response.status_code": 401,
        },
        {
            "tenant_gateway.outcome": "refused",
            "tenant_gateway.refusal": "invalid_api_key",
            "tenant_gateway.plan": "",
            "http.response.status_code": 401,
        },
    ]
    admin = [s for s in spans if s.name.startswith("GET /api/v1/tenants")]
    (register_span,) = [s for s in spans if s.name == "POST /api/v1/tenants/register"]
    assert attributes(register_span)["http.response.status_code"] == 201
    (usage_span,) = admin
    assert usage_span.name == "GET /api/v1/tenants/{tenant_id}/usage"
    assert attributes(usage_span) == {
        "http.request.method": "GET",
        "http.route": "/api/v1/tenants/{tenant_id}/usage",
        "http.response.status_code": 200,
        "tenant_gateway.tenant_id": tenant["id"],
    }
    assert len(spans) == 7  # five calls, two admin requests
    assert not any(s.name == ADMIN_SPAN for s in spans)  # each admin span named by its route


async def test_the_app_runs_inside_the_gate_span(
    client_for: ClientFor, exporter: InMemorySpanExporter
) -> None:
    """A span the wrapped app starts is a child of the gate's; a 5xx marks the gate's an error."""
    provider = provider_for(exporter)
    tracer = provider.get_tracer("the-app")
    inner = echo_app()

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        with tracer.start_as_current_span("app work"):
            await inner(scope, receive, send)  # type: ignore[arg-type]

    client = await client_for(TenantGateway(app, tracer_provider=provider))  # type: ignore[arg-type]
    tenant = await register(client)
    assert (await client.get("/fail", headers=auth(tenant))).status_code == 503
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    work, gate = by_name["app work"], by_name[GATE_SPAN]
    assert work.parent is not None and gate.context is not None
    assert work.parent.span_id == gate.context.span_id
    assert gate.status.status_code is StatusCode.ERROR
