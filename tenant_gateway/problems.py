"""The catalogue of refusals (SPEC §4) and their RFC 9457 rendering: the HTTP layer's.

Each constructor returns a ``Problem``; raising it anywhere under the gateway or the
admin app produces the same ``application/problem+json`` body with a stable ``code``.
The layers below raise domain errors (``exceptions.Refusal``); ``for_refusal`` is the one
place that turns those into problems.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from starlette.responses import Response

from tenant_gateway.exceptions import (
    AmbiguousCredentials,
    BurstLimited,
    InvalidApiKey,
    Problem,
    QuotaExceeded,
    Refusal,
    SeatLimitReached,
    TenantSuspended,
    TooManyAttempts,
    TooManyUsers,
    UserExists,
)

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "ambiguous_credentials",
    "client_disconnected",
    "concurrent_requests",
    "for_refusal",
    "forbidden",
    "import_rejected",
    "invalid_api_key",
    "lock_timeout",
    "method_not_allowed",
    "missing_api_key",
    "not_found",
    "not_supported",
    "operator_token_required",
    "gateway_not_started",
    "payload_too_large",
    "plan_not_configured",
    "problem_response",
    "quota_exceeded",
    "quota_unavailable",
    "rate_limited",
    "request_timeout",
    "service_unavailable",
    "tenant_suspended",
    "too_many_attempts",
    "too_many_changes",
    "too_many_users",
    "transfer_busy",
    "unauthorized",
    "user_exists",
    "user_limit_reached",
    "validation_error",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_BASE = "https://tenant-gateway.dev/problems/"


def problem_response(problem: Problem) -> Response:
    body: dict[str, object] = {
        **problem.extensions,
        "type": _TYPE_BASE + problem.code.replace("_", "-"),
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def for_refusal(refusal: Refusal) -> Problem:
    """The answer to a refusal raised below the HTTP layer, with the headers it carries."""
    problem = _problem_of(refusal)
    for name, value in refusal.headers:
        problem.headers[name.decode("latin-1")] = value.decode("latin-1")
    return problem


def _problem_of(refusal: Refusal) -> Problem:
    match refusal:
        case InvalidApiKey():
            return invalid_api_key()
        case TenantSuspended():
            return tenant_suspended()
        case AmbiguousCredentials():
            return ambiguous_credentials()
        case TooManyAttempts():
            return too_many_attempts(refusal.what, refusal.retry_after)
        case BurstLimited():
            return rate_limited(refusal.per_second, refusal.retry_after)
        case QuotaExceeded():
            return quota_exceeded(refusal.limit, refusal.retry_after)
        case UserExists():
            return user_exists(refusal.email)
        case SeatLimitReached():
            return user_limit_reached(refusal.limit)
        case TooManyUsers():
            return too_many_users(refusal.users, refusal.limit)
    raise TypeError(f"no problem is defined for {type(refusal).__name__}")


def missing_api_key() -> Problem:
    return Problem(
        401,
        "missing_api_key",
        "API key required",
        "Send the tenant's key as 'Authorization: Bearer tk_…' or 'X-API-Key: tk_…'.",
        headers={"WWW-Authenticate": 'Bearer realm="tenant-gateway"'},
    )


def invalid_api_key() -> Problem:
    return Problem(
        401,
        "invalid_api_key",
        "Invalid API key",
        "The API key is malformed, unknown, revoked or expired.",
        headers={"WWW-Authenticate": 'Bearer realm="tenant-gateway", error="invalid_token"'},
    )


def unauthorized(detail: str) -> Problem:
    """Admin credentials that are present but not acceptable (a bad operator token)."""
    return Problem(
        401,
        "invalid_api_key",
        "Invalid credentials",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="tenant-gateway", error="invalid_token"'},
    )


def operator_token_required() -> Problem:
    return Problem(
        401,
        "missing_api_key",
        "Operator token required",
        "Send an operator token as 'Authorization: Bearer <JWT>'.",
        headers={"WWW-Authenticate": 'Bearer realm="tenant-gateway"'},
    )


def method_not_allowed(allowed: str) -> Problem:
    """RFC 9110 §15.5.6: a 405 names what is allowed."""
    return Problem(
        405,
        "method_not_allowed",
        "Method not allowed",
        f"This path answers {allowed}.",
        headers={"Allow": allowed},
    )


def ambiguous_credentials() -> Problem:
    """Two credentials that differ in one request: answering with either could act as the
    wrong tenant, so neither is used."""
    return Problem(
        400,
        "ambiguous_credentials",
        "Ambiguous credentials",
        "The request carries more than one credential (repeated 'Authorization' or"
        " 'X-API-Key' headers, or both) and they differ; send exactly one.",
    )


def tenant_suspended() -> Problem:
    return Problem(403, "tenant_suspended", "Tenant suspended", "This tenant is suspended.")


def forbidden(detail: str) -> Problem:
    return Problem(403, "forbidden", "Forbidden", detail)


def not_found(detail: str = "No such resource.") -> Problem:
    return Problem(404, "not_found", "Not found", detail)


def quota_exceeded(limit: int, retry_after: int) -> Problem:
    return Problem(
        429,
        "quota_exceeded",
        "Monthly API call quota exceeded",
        f"The plan allows {limit} calls per calendar month; the quota resets in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


def rate_limited(per_second: int, retry_after: int) -> Problem:
    return Problem(
        429,
        "rate_limited",
        "Burst rate limit exceeded",
        f"The plan allows {per_second} calls per second.",
        headers={"Retry-After": str(retry_after)},
    )


def too_many_attempts(what: str, retry_after: int) -> Problem:
    """A per-client-address limit (sign-ups, failed authentications) is used up."""
    return Problem(
        429,
        "rate_limited",
        "Too many requests from this address",
        f"Too many {what} from this client address; try again in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


def too_many_changes(what: str, retry_after: int) -> Problem:
    """A per-tenant limit on changing one setting (its plan, its webhook) is used up."""
    return Problem(
        429,
        "rate_limited",
        f"Too many {what} changes",
        f"This tenant's {what} may be changed again in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


def user_limit_reached(limit: int) -> Problem:
    return Problem(
        403,
        "user_limit_reached",
        "User limit reached",
        f"The tenant already has its maximum of {limit} users.",
    )


def user_exists(email: str) -> Problem:
    return Problem(409, "user_exists", "User already exists", f"{email} is already a user.")


def too_many_users(users: int, limit: int) -> Problem:
    return Problem(
        409,
        "too_many_users",
        "Too many users for that plan",
        f"The tenant has {users} users; the new plan allows {limit}. Remove users first.",
    )


def validation_error(
    detail: str, errors: Sequence[Mapping[str, str]], status: int = 422
) -> Problem:
    return Problem(status, "validation_error", "Invalid request", detail, errors=errors)


def payload_too_large(limit: int) -> Problem:
    return Problem(
        413,
        "payload_too_large",
        "Payload too large",
        f"The request body is larger than the limit of {limit} bytes.",
    )


def quota_unavailable() -> Problem:
    return Problem(
        503,
        "quota_unavailable",
        "Quota service unavailable",
        "The usage counters cannot be reached; try again shortly.",
        headers={"Retry-After": "1"},
    )


def not_supported(detail: str) -> Problem:
    return Problem(501, "not_supported", "Not supported here", detail)


def import_rejected(line: int, table: str | None, reason: str) -> Problem:
    where = f"line {line}" + (f" (table {table})" if table else "")
    return Problem(
        422,
        "validation_error",
        "Import rejected",
        f"Nothing was imported: {where}: {reason}.",
        errors=[{"field": f"line {line}", "message": reason}],
        extensions={"line": line, "table": table, "reason": reason},
    )


def service_unavailable(detail: str) -> Problem:
    return Problem(
        503, "service_unavailable", "Service unavailable", detail, headers={"Retry-After": "1"}
    )


def plan_not_configured(plan: str) -> Problem:
    """A tenant on a plan the catalogue does not have: the operator's to fix, so no
    ``Retry-After`` (a client retrying would only meet it again)."""
    return Problem(
        503,
        "plan_not_configured",
        "Plan not configured",
        f"The tenant's plan {plan!r} is not in this gateway's plans catalogue. This is a"
        f" configuration error: the operator must add plan {plan!r} to the plans file (or move"
        " the tenant to another plan).",
    )


def gateway_not_started(*, transient: bool) -> Problem:
    """The gateway could not start on a request (a server that sends no lifespan events); the
    next request tries again. Why is the server log's to say, not the client's to read: a store
    outage (``transient``: it may pass, ``Retry-After``), or a configuration error."""
    if transient:
        detail = "The gateway could not start: a backing store cannot be reached."
    else:
        detail = "The gateway could not start: a configuration error the operator must fix."
    return Problem(
        503,
        "gateway_not_started",
        "Gateway not started",
        detail + " The server's log says why.",
        headers={"Retry-After": "5"} if transient else {},
    )


def transfer_busy(detail: str, *, per_tenant: bool, retry_after: int) -> Problem:
    """429 when the tenant's own export or import is still running, 503 when the server runs as
    many as it allows (other tenants' doing, not this caller's)."""
    if per_tenant:
        return Problem(
            429,
            "transfer_in_progress",
            "Transfer in progress",
            detail,
            headers={"Retry-After": str(retry_after)},
        )
    return Problem(
        503, "transfers_busy", "Transfers busy", detail, headers={"Retry-After": str(retry_after)}
    )


def request_timeout(detail: str) -> Problem:
    # RFC 9110 §15.5.9: the server has stopped waiting, so it closes the connection.
    return Problem(
        408, "request_timeout", "Request timeout", detail, headers={"Connection": "close"}
    )


def client_disconnected(detail: str) -> Problem:
    """The client left before its request was whole (nobody reads this: the access log does)."""
    return Problem(400, "client_disconnected", "Client disconnected", detail)


def concurrent_requests(limit: int) -> Problem:
    """The tenant has as many admin requests in progress in this process as it may."""
    return Problem(
        429,
        "rate_limited",
        "Too many concurrent requests",
        f"This tenant already has {limit} admin requests in progress; try again when one ends.",
        headers={"Retry-After": "1"},
    )


def lock_timeout() -> Problem:
    """What the request must change is held by another transaction (the tenant's import in
    progress, another request) for longer than a request may wait: nothing was changed."""
    return Problem(
        409,
        "lock_timeout",
        "Resource busy",
        "Another request or an import in progress holds this tenant's records; nothing was"
        " changed. Try again shortly.",
        headers={"Retry-After": "1"},
    )
