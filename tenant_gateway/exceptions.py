"""Every exception tenant_gateway raises.

TenantGatewayError
├── ConfigurationError        bad constructor argument or plans file
│   └── PlanNotConfigured     a tenant is on a plan the plans catalogue does not have
├── StoreUnavailable          Postgres or Redis could not be reached (wraps the driver error)
│   └── StoreBusy             it answered, but a lock the work needed stayed held too long
├── NoTenantContext           a tenant query was attempted outside a resolved request
├── TransferBusy              an export or import cannot start now (tenant or process limit)
├── WebhookTargetRefused      a webhook URL leads to an address the policy refuses
├── ImportRejected            an import stream cannot be imported; nothing was written
├── BurstRefused              a tenant's burst window is full (the metering step answers 429)
├── Refusal                   a request refused for the caller's own reason (SPEC §4)
│   ├── InvalidApiKey         malformed, unknown, revoked, expired or deleted
│   ├── TenantSuspended
│   ├── AmbiguousCredentials  two credentials that differ in one request
│   ├── TooManyAttempts       a per-client-address limit (sign-ups, failed authentications)
│   ├── BurstLimited          the plan's calls a second (with its RateLimit headers)
│   ├── QuotaExceeded         the plan's calls a month (with its RateLimit headers)
│   ├── UserExists
│   ├── SeatLimitReached      the plan's users, when adding one
│   └── TooManyUsers          the plan's users, when changing plan
└── Problem                   an HTTP-facing refusal, rendered as RFC 9457 problem+json

The domain and the stores raise the errors above ``Problem``; the HTTP layer alone renders them
(``problems.for_refusal``, ``problems.problem_response``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = [
    "AmbiguousCredentials",
    "BurstLimited",
    "BurstRefused",
    "ConfigurationError",
    "ImportRejected",
    "InvalidApiKey",
    "NoTenantContext",
    "PlanNotConfigured",
    "Problem",
    "QuotaExceeded",
    "Refusal",
    "SeatLimitReached",
    "StoreBusy",
    "StoreUnavailable",
    "TenantGatewayError",
    "TenantSuspended",
    "TooManyAttempts",
    "TooManyUsers",
    "TransferBusy",
    "UserExists",
    "WebhookTargetRefused",
    "redact_url",
]

Header = tuple[bytes, bytes]


class TenantGatewayError(Exception):
    """Root of every tenant_gateway exception."""


class ConfigurationError(TenantGatewayError):
    """A constructor argument, plans file or URL is not usable."""


class PlanNotConfigured(ConfigurationError):
    """A tenant is on a plan the catalogue does not have (it was removed from the plans file):
    the operator must add it back, or move the tenant to another plan."""

    def __init__(self, plan: str) -> None:
        super().__init__(
            f"plan {plan!r} is not in the plans catalogue: add it to the plans file, or move the"
            " tenant to another plan"
        )
        self.plan = plan


class StoreUnavailable(TenantGatewayError):
    """A backing store (Postgres, Redis) did not answer."""

    def __init__(self, store: str, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {store} at {url}: {reason}")
        self.store = store
        self.url = url
        self.reason = reason


class StoreBusy(StoreUnavailable):
    """The store answered, but a lock the work needed stayed held longer than the work may
    wait (a long transaction holds it): nothing was changed; try again. A ``StoreUnavailable``
    to whoever retries or reports those (the usage flush, start-up)."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(store, "", reason)
        self.args = (f"{store} is busy: {reason}",)


class NoTenantContext(TenantGatewayError):
    """A tenant-scoped query was attempted without a tenant resolved by the gateway."""


class TransferBusy(TenantGatewayError):
    """An export or import could not start: the tenant already runs one (``per_tenant``), here
    or in another process, or this process runs as many as it allows."""

    def __init__(self, detail: str, *, per_tenant: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.per_tenant = per_tenant


class WebhookTargetRefused(TenantGatewayError):
    """A webhook URL is malformed, or leads to an address the policy refuses (``netpolicy``)."""


class ImportRejected(TenantGatewayError):
    """The stream cannot be imported; nothing was written."""

    def __init__(self, line: int, table: str | None, reason: str) -> None:
        where = f"line {line}" + (f", table {table}" if table else "")
        super().__init__(f"{where}: {reason}")
        self.line = line
        self.table = table
        self.reason = reason


class BurstRefused(TenantGatewayError):
    """The tenant's burst window is full (an answer, not a failure: the caller refuses 429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"burst window full, retry in {retry_after} s")
        self.retry_after = retry_after
        """Whole seconds until a call would be allowed again (at least 1)."""


class Refusal(TenantGatewayError):
    """A request refused for a reason of the caller's own, raised below the HTTP layer.
    ``headers``: response headers the answer must carry (the RateLimit fields)."""

    def __init__(self, message: str, headers: tuple[Header, ...] = ()) -> None:
        super().__init__(message)
        self.headers = headers


class InvalidApiKey(Refusal):
    def __init__(self) -> None:
        super().__init__("the API key is malformed, unknown, revoked or expired")


class TenantSuspended(Refusal):
    def __init__(self) -> None:
        super().__init__("the tenant is suspended")


class AmbiguousCredentials(Refusal):
    """Two credentials that differ in one request: acting on either could act as the wrong
    tenant, so neither is used."""

    def __init__(self) -> None:
        super().__init__("the request carries two credentials that differ")


class TooManyAttempts(Refusal):
    """A per-client-address limit is used up: ``what`` names it ("sign-ups")."""

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"too many {what} from this client address")
        self.what = what
        self.retry_after = retry_after


class BurstLimited(Refusal):
    def __init__(self, per_second: int, retry_after: int, headers: tuple[Header, ...]) -> None:
        super().__init__(f"over {per_second} calls a second", headers)
        self.per_second = per_second
        self.retry_after = retry_after


class QuotaExceeded(Refusal):
    def __init__(self, limit: int, retry_after: int, headers: tuple[Header, ...]) -> None:
        super().__init__(f"over {limit} calls this month", headers)
        self.limit = limit
        self.retry_after = retry_after
        """Seconds until the quota resets (the month ends)."""


class UserExists(Refusal):
    def __init__(self, email: str) -> None:
        super().__init__(f"{email} is already a user")
        self.email = email


class SeatLimitReached(Refusal):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the tenant already has its maximum of {limit} users")
        self.limit = limit


class TooManyUsers(Refusal):
    """A plan change to a plan that allows fewer users than the tenant has."""

    def __init__(self, users: int, limit: int) -> None:
        super().__init__(f"the tenant has {users} users; the plan allows {limit}")
        self.users = users
        self.limit = limit


class Problem(TenantGatewayError):
    """A refusal that the gateway answers with problem+json (see ``problems.py``)."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
        extensions: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.extensions = dict(extensions or {})
        """Extra members of the problem document (RFC 9457 §3.2)."""


def redact_url(url: str) -> str:
    """The URL without its passwords, fit for logs and error messages: the user's, and query
    values whose name ends in ``password`` (``ssl_password``, libpq's ``sslpassword``)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # beyond urllib (an unclosed IPv6 bracket): hide the whole user part
        head, _, query = url.partition("?")
        scheme, sep, rest = head.rpartition("://")
        user, at, rest = rest.partition("@") if "@" in rest else ("", "", rest)
        query = "&".join(_redact_parameter(pair) for pair in query.split("&")) if query else ""
        return f"{scheme}{sep}{'***' if at else ''}{at}{rest}" + (f"?{query}" if query else "")
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = "&".join(_redact_parameter(pair) for pair in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_parameter(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if value and unquote_plus(name).lower().endswith("password"):
        return f"{name}{equals}***"
    return pair
