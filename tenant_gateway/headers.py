"""RateLimit-Policy / RateLimit header values (draft-ietf-httpapi-ratelimit-headers)."""

from __future__ import annotations

from tenant_gateway.plans import Plan

__all__ = ["policy_header", "remaining_header"]


def policy_header(plan: Plan) -> bytes:
    """``"burst";q=10;w=1, "monthly";q=1000``; items for unlimited dimensions are omitted."""
    items = []
    if plan.burst_per_second is not None:
        items.append(f'"burst";q={plan.burst_per_second};w=1')
    if plan.monthly_calls is not None:
        items.append(f'"monthly";q={plan.monthly_calls}')
    return ", ".join(items).encode("latin-1")


def remaining_header(name: str, remaining: int, reset_seconds: int) -> bytes:
    return f'"{name}";r={max(0, remaining)};t={reset_seconds}'.encode("latin-1")
