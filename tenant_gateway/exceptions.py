"""Every exception tenant_gateway raises.

TenantGatewayError
├── ConfigurationError        bad constructor argument or plans file
├── StoreUnavailable          Postgres or Redis could not be reached (wraps the driver error)
│   └── StoreBusy             it answered, but a lock the work needed stayed held too long
├── NoTenantContext           a tenant query was attempted outside a resolved request
├── TransferBusy              an export or import cannot start now (tenant or process limit)
├── WebhookTargetRefused      a webhook URL leads to an address the policy refuses
└── Problem                   an HTTP-facing refusal, rendered as RFC 9457 problem+json
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = [
    "ConfigurationError",
    "NoTenantContext",
    "Problem",
    "StoreBusy",
    "StoreUnavailable",
    "TenantGatewayError",
    "TransferBusy",
    "WebhookTargetRefused",
    "redact_url",
]


class TenantGatewayError(Exception):
    """Root of every tenant_gateway exception."""


class ConfigurationError(TenantGatewayError):
    """A constructor argument, plans file or URL is not usable."""


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
    parts = urlsplit(url)
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
