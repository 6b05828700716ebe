"""The HTTP layer's mapping of the domain's refusals (``problems.for_refusal``)."""

from __future__ import annotations

import json

import pytest

from tenant_gateway import problems
from tenant_gateway.exceptions import (
    AmbiguousCredentials,
    BurstLimited,
    InvalidApiKey,
    QuotaExceeded,
    Refusal,
    SeatLimitReached,
    TenantSuspended,
    TooManyAttempts,
    TooManyUsers,
    UserExists,
)

LIMIT_HEADERS = ((b"ratelimit-policy", b'"monthly";q=100'), (b"ratelimit", b'"monthly";r=0;t=9'))

EXPECTED: list[tuple[Refusal, int, str, dict[str, str]]] = [
    (InvalidApiKey(), 401, "invalid_api_key", {}),
    (TenantSuspended(), 403, "tenant_suspended", {}),
    (AmbiguousCredentials(), 400, "ambiguous_credentials", {}),
    (TooManyAttempts("sign-ups", 7), 429, "rate_limited", {"Retry-After": "7"}),
    (BurstLimited(10, 1, LIMIT_HEADERS), 429, "rate_limited", {"Retry-After": "1"}),
    (QuotaExceeded(100, 9, LIMIT_HEADERS), 429, "quota_exceeded", {"Retry-After": "9"}),
    (UserExists("a@b.io"), 409, "user_exists", {}),
    (SeatLimitReached(5), 403, "user_limit_reached", {}),
    (TooManyUsers(6, 5), 409, "too_many_users", {}),
]


def _subclasses(cls: type[Refusal]) -> set[type[Refusal]]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found))


def test_every_refusal_has_its_problem() -> None:
    """A refusal added to the tree without a mapping fails here, not as a 500 in production."""
    assert {type(refusal) for refusal, *_ in EXPECTED} == _subclasses(Refusal)


@pytest.mark.parametrize(("refusal", "status", "code", "headers"), EXPECTED)
def test_a_refusal_renders_with_its_status_code_and_headers(
    refusal: Refusal, status: int, code: str, headers: dict[str, str]
) -> None:
    problem = problems.for_refusal(refusal)
    assert (problem.status, problem.code) == (status, code)
    assert headers.items() <= problem.headers.items()
    for name, value in refusal.headers:  # the RateLimit fields travel with the refusal
        assert problem.headers[name.decode()] == value.decode()
    body = json.loads(bytes(problems.problem_response(problem).body))
    assert (body["status"], body["code"]) == (status, code)


def test_a_refusal_nobody_mapped_is_a_programming_error() -> None:
    class Unmapped(Refusal):
        pass

    with pytest.raises(TypeError, match="Unmapped"):
        problems.for_refusal(Unmapped("no mapping"))
