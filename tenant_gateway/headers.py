"""RateLimit-Policy / RateLimit header values (draft-ietf-httpapi-ratelimit-headers)."""

from __future__ import annotations

from tenant_gateway.plans import Plan

__all__ = ["Header", "declared_over", "policy_header", "remaining_header"]

Header = tuple[bytes, bytes]
"""A raw ASGI header: (lower-case name, value)."""


def declared_over(content_length: str | None, limit: int) -> bool:
    """Whether a Content-Length value declares more than ``limit`` bytes (a value that is not
    a plain decimal is left to the server; any number of digits is handled)."""
    if content_length is None or not content_length.isdigit():
        return False
    digits = content_length.lstrip("0")
    return len(digits) > 18 or int(digits or "0") > limit


def policy_header(plan: Plan) -> bytes:
    """``"burst";q=10;w=1, "monthly";q=1000``; items for unlimited dimensions are omitted."""
    items = []
    if plan.burst_per_second is not None:
        items.append(f'"burst";q={plan.burst_per_second};w=1')
    if plan.monthly_calls is not None:
        items.append(f'"monthly";q={plan.monthly_calls}')
    return ", ".join(items).encode("latin-1")


_ITEMS = {name: b'"%s";r=%%d;t=%%d' % name.encode() for name in ("burst", "monthly")}


def remaining_header(name: str, remaining: int, reset_seconds: int) -> bytes:
    """``"monthly";r=153;t=1209600`` (bytes formatting: a fifth of an f-string's cost here)."""
    return _ITEMS[name] % (remaining if remaining > 0 else 0, reset_seconds)
