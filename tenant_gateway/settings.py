"""Everything one gateway process is configured with, checked once.

``TenantGateway``'s keyword arguments become a ``Settings``; the services, the stores, the
metering step and the admin API read from it, and the command line builds one for the work it
does without serving (closing a period). Each field is documented with the keyword argument of
the same name in ``docs/configuration.md``, generated from ``options.OPTIONS``.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from tenant_gateway.clock import Clock, Sleep, system_clock
from tenant_gateway.events import QuotaHook
from tenant_gateway.exceptions import ConfigurationError
from tenant_gateway.plans import DEFAULT_PLANS, PlanCatalog
from tenant_gateway.postgres.url import parse_postgres_url
from tenant_gateway.redis.urls import check_redis_url
from tenant_gateway.usage import RouteOf

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    plans: PlanCatalog = field(default_factory=lambda: DEFAULT_PLANS)
    admin_prefix: str = "/api/v1/tenants"
    admin_jwt_secret: str | None = None
    admin_jwt_public_key: str | None = None
    admin_jwt_audience: str | None = None
    admin_jwt_issuer: str | None = None
    admin_jwt_max_lifetime: float | None = 24 * 3600.0
    public_paths: frozenset[str] = frozenset()
    """Exact paths, or prefixes: a trailing ``*`` stands for any rest (``/docs/*``)."""
    max_body_bytes: int = 10 * 1024 * 1024
    admin_max_body_bytes: int = 1024 * 1024
    import_max_bytes: int = 256 * 1024 * 1024
    allow_signup: bool = True
    signup_rate: str | None = "10/minute"
    signup_plans: frozenset[str] | None = None
    """The plans self-service sign-up may choose (None: all)."""
    auth_failure_rate: str | None = "30/minute"
    plan_change_rate: str | None = "10/hour"
    redis_key_prefix: str = "tg:"
    burst_storage: str = "async+memory://"
    key_cache_ttl: float = 1.0
    """Seconds a cached key is trusted past the last moment this process knew every change."""
    key_cache_long_ttl: float = 60.0
    """Seconds a cached key may live at most while invalidation is confirmed (never less than
    ``key_cache_ttl``)."""
    key_cache_size: int = 100_000
    usage_flush_interval: float = 1.0
    invoice_close_grace: float = 60.0
    on_quota_threshold: QuotaHook | None = None
    webhook_allowed_networks: tuple[str, ...] = ()
    webhook_attempt_timeout: float = 10.0
    """Seconds one webhook attempt may take in all (name lookup, connect, send, answer)."""
    redis_fail_mode: str = "closed"
    health_paths: tuple[str, str] | None = ("/healthz", "/readyz")
    metrics_path: str | None = None
    """Where the gateway answers its Prometheus metrics, never metered, ahead of the wrapped
    app (e.g. "/metrics"); None, the default: nowhere, every path is the app's. ``serve``,
    which owns its app, sets "/metrics"."""
    metrics_require_operator: bool = False
    """Whether ``metrics_path`` needs an operator token (``admin_jwt_secret`` or
    ``admin_jwt_public_key`` set)."""
    tracer_provider: object | None = None
    """The OpenTelemetry ``TracerProvider`` of the gateway's spans (None: the global one);
    unused without ``opentelemetry-api``."""
    route_of: RouteOf | None = None
    """The route template of an answered call, from its scope, for frameworks the gateway
    does not read itself (None: ``scope["path_template"]`` or ``scope["route"]``)."""
    admin_timeout: float = 10.0
    """Seconds an admin request may take; also bounds each of a transfer's statements."""
    transfer_concurrency: int = 2
    transfer_idle_timeout: float = 10.0
    """How long an export may wait for its client to read, an import for it to send."""
    transfer_min_rate: int = 1024
    """Bytes a second a transfer's client must keep up, averaged over the idle timeout."""
    transfer_max_duration: float = 3600.0
    """Seconds a transfer may last at most, however fast it moves."""
    admin_tenant_concurrency: int = 4
    console_path: str | None = "/console"
    """Where the web console is served, under ``admin_prefix`` (None: no console)."""
    console_secret: str | None = None
    """Signs the console's session cookies; every worker needs the same one (None: derived
    from ``admin_jwt_secret`` when set, else random per process)."""
    console_session_lifetime: float = 3600.0
    """Seconds a console session lasts from sign-in (an operator's: never past its token)."""
    clock: Clock = field(default=system_clock)
    sleep: Sleep = field(default=asyncio.sleep)

    def __post_init__(self) -> None:
        prefix = self.admin_prefix
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ConfigurationError("admin_prefix must start with '/' and not end with '/'")
        for path in self.public_paths:
            if not path.startswith("/") or "*" in path[:-1]:
                raise ConfigurationError(
                    f"public path {path!r} must start with '/' and may hold one '*', at its end"
                )
        if min(self.max_body_bytes, self.admin_max_body_bytes, self.import_max_bytes) < 0:
            raise ConfigurationError("body limits must be non-negative")
        if self.webhook_attempt_timeout <= 0:
            raise ConfigurationError("webhook_attempt_timeout must be positive")
        if self.usage_flush_interval <= 0 or self.key_cache_size < 1:
            raise ConfigurationError("flush interval and cache size must be positive")
        if not 0 <= self.key_cache_ttl < math.inf or not 0 <= self.key_cache_long_ttl < math.inf:
            raise ConfigurationError("key_cache_ttl and key_cache_long_ttl must be finite and >= 0")
        if self.database_url is not None:
            parse_postgres_url(self.database_url)  # its scheme, ports and pool options
        if self.redis_url:
            check_redis_url(self.redis_url)
        if self.redis_fail_mode not in ("open", "closed"):
            raise ConfigurationError('redis_fail_mode must be "open" or "closed"')
        if self.transfer_concurrency < 1 or self.transfer_idle_timeout <= 0:
            raise ConfigurationError(
                "transfer_concurrency and transfer_idle_timeout must be positive"
            )
        if self.transfer_min_rate < 0 or self.transfer_max_duration <= 0:
            raise ConfigurationError(
                "transfer_min_rate must be >= 0 and transfer_max_duration positive"
            )
        if self.metrics_path is not None and not self.metrics_path.startswith("/"):
            raise ConfigurationError("metrics_path must start with '/' (None: no metrics)")
        if self.metrics_require_operator and self.metrics_path is None:
            raise ConfigurationError(
                "metrics_require_operator has no metrics to protect: set metrics_path too"
            )
        if self.metrics_require_operator and not (
            self.admin_jwt_secret or self.admin_jwt_public_key
        ):
            raise ConfigurationError(
                "metrics_require_operator needs operator tokens: set admin_jwt_secret"
                " (TG_ADMIN_JWT_SECRET) or admin_jwt_public_key"
            )
        _check_console(self)
        offered = self.signup_plans
        if offered is not None and (not offered or not offered <= set(self.plans)):
            raise ConfigurationError(
                f"signup_plans must name plans of the catalogue ({', '.join(sorted(self.plans))})"
            )


_ADMIN_PATHS = ("/register", "/openapi.json")


def _check_console(settings: Settings) -> None:
    path = settings.console_path
    if path is not None and (
        not path.startswith("/")
        or path.endswith("/")
        or len(path) < 2
        or any(c in path for c in "{}?#%")
        or path.split("/")[1].startswith("tenant_")
        or path in _ADMIN_PATHS
    ):
        raise ConfigurationError(
            "console_path must start with '/', not end with '/', and name no admin route"
            " (None: no console)"
        )
    if settings.console_secret is not None and len(settings.console_secret) < 32:
        raise ConfigurationError("console_secret must be at least 32 characters")
    if not 60 <= settings.console_session_lifetime <= 7 * 24 * 3600:
        raise ConfigurationError("console_session_lifetime must be from 60 s to 7 days")
