"""Every setting, declared once (``OPTIONS``): ``cli`` builds its flags from it, ``serve`` the
workers' gateway from the ``TG_*`` variables, and ``reference`` the configuration reference
(``docs/configuration.md``). ``TenantGateway``'s keyword arguments and ``Settings`` stay the
Python API; each has its row here, with its flag and variable if the command line sets it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, MutableMapping
from typing import Any

from tenant_gateway.option import (
    Option,
    parse_boolean,
    parse_lifetime,
    parse_log_format,
    parse_names,
    parse_networks,
    parse_number,
    parse_optional,
    parse_path_or_off,
    parse_port,
    parse_rate_text,
    parse_secret,
    parse_text,
)

__all__ = ["OPTIONS", "add_flags", "for_command", "from_environment", "to_environment", "values"]

_ALL = ("serve", "migrate", "billing close", "export", "import")
_STORES = ("serve", "billing close", "import")
_OPERATORS = ("serve", "token")
_ADMIN = "Admin API and operators"
_ABUSE = "Sign-up and abuse controls"
_OBSERVE = "Metrics, traces and logs"

OPTIONS: tuple[Option, ...] = (
    Option(
        name="database_url",
        group="Stores",
        help="PostgreSQL for the tenant directory, usage ledger and invoices"
        " (`postgresql://user:password@host:port/database`; `?statement_cache_size=0` behind"
        " PgBouncer, `pool_min_size`, `pool_max_size`); unset: memory, in each process",
        flag="--database-url",
        env="TG_DATABASE_URL",
        commands=_ALL,
        parse=parse_optional,
        metavar="URL",
    ),
    Option(
        name="redis_url",
        group="Stores",
        help="Redis for the usage counters: `redis://`, `rediss://` (TLS), `unix://`,"
        " `redis+cluster://h:p[,h:p…]`, `redis+sentinel://h:p[,h:p…]/service[/db]`;"
        " unset: memory, in each process",
        flag="--redis-url",
        env="TG_REDIS_URL",
        commands=_STORES,
        parse=parse_optional,
        metavar="URL",
    ),
    Option(
        name="redis_key_prefix",
        group="Stores",
        help="the prefix of every Redis key the gateway writes (one per gateway sharing a Redis)",
        flag="--redis-key-prefix",
        env="TG_REDIS_KEY_PREFIX",
        commands=_STORES,
        parse=parse_text,
        metavar="PREFIX",
    ),
    Option(
        name="burst_storage",
        group="Stores",
        help="the `limits` async storage URI of the burst windows: the default counts in each"
        " process, `async+redis://…` shares one window",
    ),
    Option(
        name="plans",
        group="Plans",
        help="the plans file, JSON or TOML (see Plans file); in Python also the same mapping or"
        " a `PlanCatalog`; replaces the default plans",
        flag="--plans",
        env="TG_PLANS",
        commands=_STORES,
        parse=parse_optional,
        metavar="FILE",
        shown_default="`None`: the default plans",
    ),
    Option(
        name="admin_prefix",
        group=_ADMIN,
        help="where the admin API is mounted (starts with `/`, does not end with one)",
    ),
    Option(
        name="admin_jwt_secret",
        group=_ADMIN,
        help="the HS256 secret of operator tokens, at least 32 characters (`tenant-gateway"
        " token` mints them); unset: no operator tokens. Prefer the variable: a flag shows in"
        " the process list",
        flag="--admin-jwt-secret",
        env="TG_ADMIN_JWT_SECRET",
        commands=_OPERATORS,
        parse=parse_secret,
        metavar="SECRET",
    ),
    Option(
        name="admin_jwt_public_key",
        group=_ADMIN,
        help="a PEM public key that verifies RS256/ES256 operator tokens, instead of a secret",
    ),
    Option(
        name="admin_jwt_audience",
        group=_ADMIN,
        help="the `aud` operator tokens must carry (unset: not checked)",
    ),
    Option(
        name="admin_jwt_issuer",
        group=_ADMIN,
        help="the `iss` operator tokens must carry (unset: not checked)",
    ),
    Option(
        name="admin_jwt_max_lifetime",
        group=_ADMIN,
        help="seconds an operator token may live at most, from its `iat` (or now) to its `exp`"
        " (flag and variable: also `30m`, `12h`, `7d`); `none` (None): no limit",
        flag="--admin-jwt-max-lifetime",
        env="TG_ADMIN_JWT_MAX_LIFETIME",
        commands=_OPERATORS,
        parse=parse_lifetime,
        metavar="DURATION",
    ),
    Option(
        name="admin_max_body_bytes",
        group=_ADMIN,
        help="the largest admin request body, in bytes (imports: `import_max_bytes`)",
    ),
    Option(
        name="import_max_bytes",
        group=_ADMIN,
        help="the largest import body, in bytes (`Settings` only)",
        target="settings",
    ),
    Option(
        name="admin_timeout",
        group=_ADMIN,
        help="seconds an admin request may take (then 503); bounds each statement of a transfer",
    ),
    Option(
        name="admin_tenant_concurrency",
        group=_ADMIN,
        help="admin requests one tenant may run at once in a process (operators not counted)",
    ),
    Option(
        name="console_path",
        group=_ADMIN,
        help="where the web console is served, under `admin_prefix`; `''` (None): no console",
        flag="--console-path",
        env="TG_CONSOLE_PATH",
        parse=parse_path_or_off,
        metavar="PATH",
        blank_is_value=True,
    ),
    Option(
        name="console_secret",
        group=_ADMIN,
        help="signs the console's session cookies, at least 32 characters, the same in every"
        " process (unset: derived from `admin_jwt_secret` if set, else random per process;"
        " `serve` makes one for all its workers)",
        flag="--console-secret",
        env="TG_CONSOLE_SECRET",
        parse=parse_secret,
        metavar="SECRET",
    ),
    Option(
        name="console_session_lifetime",
        group=_ADMIN,
        help="seconds a console session lasts from sign-in, 60 s to 7 days (`Settings` only)",
        target="settings",
    ),
    Option(
        name="allow_signup",
        group=_ABUSE,
        help="whether anyone may register a tenant (`POST /register`); false: operators only",
        flag="--no-signup",
        env="TG_ALLOW_SIGNUP",
        parse=parse_boolean,
        switch="false",
        flag_help="only operators may register tenants (`POST /register`)",
    ),
    Option(
        name="signup_rate",
        group=_ABUSE,
        help="self-service sign-ups per client address, such as `10/minute`; `unlimited` (or"
        " None): no limit",
        flag="--signup-rate",
        env="TG_SIGNUP_RATE",
        parse=parse_rate_text,
        metavar="RATE",
    ),
    Option(
        name="signup_plans",
        group=_ABUSE,
        help="the plans self-service sign-up may choose (operators: any); unset: all",
        flag="--signup-plans",
        env="TG_SIGNUP_PLANS",
        parse=parse_names,
        metavar="PLAN[,PLAN…]",
    ),
    Option(
        name="auth_failure_rate",
        group=_ABUSE,
        help="failed key authentications per client address and process before 429;"
        " `unlimited` (or None): no limit",
        flag="--auth-failure-rate",
        env="TG_AUTH_FAILURE_RATE",
        parse=parse_rate_text,
        metavar="RATE",
    ),
    Option(
        name="plan_change_rate",
        group=_ABUSE,
        help="plan changes per tenant (operators: any); `unlimited` (or None): no limit",
        flag="--plan-change-rate",
        env="TG_PLAN_CHANGE_RATE",
        parse=parse_rate_text,
        metavar="RATE",
    ),
    Option(
        name="forwarded_allow_ips",
        group=_ABUSE,
        help="the proxies whose `X-Forwarded-For` gives the client address; unset: the"
        " connection's address",
        flag="--forwarded-allow-ips",
        env="TG_FORWARDED_ALLOW_IPS",
        parse=parse_text,
        metavar="IPS",
        target="serve",
    ),
    Option(
        name="public_paths",
        group="Requests",
        help="paths passed to the app unauthenticated and unmetered: exact, or prefixes"
        " ending in `*` (`/docs/*`)",
    ),
    Option(
        name="max_body_bytes",
        group="Requests",
        help="the largest request body the wrapped app receives, in bytes (then 413)",
    ),
    Option(
        name="health_paths",
        group="Requests",
        help="the liveness and readiness paths (unauthenticated, unmetered); None: neither",
    ),
    Option(
        name="redis_fail_mode",
        group="Requests",
        help='while the counters are unreachable: `"closed"` (503) or `"open"` (admit, count'
        " in process); a plan's `fail_mode` overrides it",
    ),
    Option(
        name="route_of",
        group="Requests",
        help="a function of a call's ASGI scope that gives its route template (for the usage"
        " report), for frameworks the gateway does not read itself",
    ),
    Option(
        name="key_cache_ttl",
        group="Key cache",
        help="seconds a process trusts a resolved key when it cannot confirm that it hears every"
        " change (no Redis beside PostgreSQL, or its subscription down)",
        flag="--key-cache-ttl",
        env="TG_KEY_CACHE_TTL",
        parse=parse_number(0),
        metavar="SECONDS",
    ),
    Option(
        name="key_cache_long_ttl",
        group="Key cache",
        help="seconds it trusts one while the Redis subscription is confirmed, or when the"
        " directory is in memory",
        flag="--key-cache-long-ttl",
        env="TG_KEY_CACHE_LONG_TTL",
        parse=parse_number(0),
        metavar="SECONDS",
    ),
    Option(
        name="key_cache_size",
        group="Key cache",
        help="resolved keys kept per process (the least recently used go first)",
        flag="--key-cache-size",
        env="TG_KEY_CACHE_SIZE",
        parse=parse_number(1, integer=True),
        metavar="KEYS",
    ),
    Option(
        name="usage_flush_interval",
        group="Usage and billing",
        help="seconds between usage flushes to the ledger: the most usage a crash loses",
        flag="--flush-interval",
        env="TG_FLUSH_INTERVAL",
        parse=parse_number(0, above=True),
        metavar="SECONDS",
    ),
    Option(
        name="invoice_close_grace",
        group="Usage and billing",
        help="seconds after a month ends before its invoices are issued (`Settings` only)",
        target="settings",
    ),
    Option(
        name="on_quota_threshold",
        group="Usage and billing",
        help="a function (sync or async) called with each 80 % and 100 % quota event",
    ),
    Option(
        name="webhook_allowed_networks",
        group="Webhooks",
        help="networks webhooks may reach though they are not public, such as `10.0.0.0/8`"
        " (the flag is repeatable, the variable comma-separated)",
        flag="--webhook-allow-network",
        env="TG_WEBHOOK_ALLOWED_NETWORKS",
        parse=parse_networks,
        metavar="CIDR",
        repeatable=True,
    ),
    Option(
        name="webhook_attempt_timeout",
        group="Webhooks",
        help="seconds one delivery attempt may take in all (lookup, connect, send, answer)",
    ),
    Option(
        name="transfer_concurrency",
        group="Export and import",
        help="exports and imports a process runs at once (one per tenant), on a pool of their own",
    ),
    Option(
        name="transfer_idle_timeout",
        group="Export and import",
        help="seconds an export waits for its client to read, an import for it to send",
        flag="--transfer-idle-timeout",
        env="TG_TRANSFER_IDLE_TIMEOUT",
        parse=parse_number(0, above=True),
        metavar="SECONDS",
    ),
    Option(
        name="transfer_min_rate",
        group="Export and import",
        help="bytes a second a transfer's client must average over each idle timeout (0: any)",
        flag="--transfer-min-rate",
        env="TG_TRANSFER_MIN_RATE",
        parse=parse_number(0, integer=True),
        metavar="BYTES_PER_SECOND",
    ),
    Option(
        name="transfer_max_duration",
        group="Export and import",
        help="seconds an export or import may last at most, however fast it moves",
        flag="--transfer-max-duration",
        env="TG_TRANSFER_MAX_DURATION",
        parse=parse_number(0, above=True),
        metavar="SECONDS",
    ),
    Option(
        name="metrics_path",
        group=_OBSERVE,
        help="where Prometheus scrapes the gateway's metrics, never metered, ahead of the app's"
        " paths (embedded: none unless set; `serve`: `/metrics`); `''` (None): no metrics",
        flag="--metrics-path",
        env="TG_METRICS_PATH",
        parse=parse_path_or_off,
        metavar="PATH",
        blank_is_value=True,
        flag_default="/metrics",
    ),
    Option(
        name="metrics_require_operator",
        group=_OBSERVE,
        help="whether the metrics path needs an operator token (with `metrics_path` and"
        " operator tokens set)",
        flag="--metrics-require-operator",
        env="TG_METRICS_REQUIRE_OPERATOR",
        parse=parse_boolean,
        switch="true",
        flag_help="the metrics path needs an operator token (operator tokens enabled)",
    ),
    Option(
        name="tracer_provider",
        group=_OBSERVE,
        help="the OpenTelemetry `TracerProvider` of the gateway's spans (None: the global one;"
        " unused without `opentelemetry-api`)",
    ),
    Option(
        name="log_format",
        group=_OBSERVE,
        help="`text`, or `json`: one JSON object a line (no API key in either)",
        flag="--log-format",
        env="TG_LOG_FORMAT",
        parse=parse_log_format,
        metavar="FORMAT",
        target="serve",
        serve_default="text",
    ),
    Option(
        name="host",
        group="Server",
        help="the address `serve` listens on",
        flag="--host",
        parse=parse_text,
        target="serve",
        serve_default="127.0.0.1",
    ),
    Option(
        name="port",
        group="Server",
        help="the port `serve` listens on",
        flag="--port",
        parse=parse_port,
        target="serve",
        serve_default="8000",
    ),
    Option(
        name="workers",
        group="Server",
        help="worker processes of `serve` (quotas stay exact: they share Redis)",
        flag="--workers",
        parse=parse_number(1, integer=True),
        target="serve",
        serve_default="1",
    ),
    Option(
        name="clock",
        group="Time",
        help="the clock (seconds since the epoch) every decision reads; tests move it",
        shown_default="`time.time`",
    ),
    Option(
        name="sleep",
        group="Time",
        help="how the gateway waits (retries, back-off); tests replace it",
        shown_default="`asyncio.sleep`",
    ),
)
"""Every setting, in the groups the reference and ``--help`` show."""


def for_command(command: str) -> tuple[Option, ...]:
    """The settings ``command`` (``serve``, ``billing close``, …) has a flag for."""
    return tuple(o for o in OPTIONS if o.flag is not None and command in o.commands)


def add_flags(parser: argparse.ArgumentParser, command: str, environ: Mapping[str, str]) -> None:
    """The command's flags, in their groups, each defaulting to its variable in ``environ``."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in for_command(command):
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        option.add_to(groups[option.group], environ)


def values(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Each of the command's settings, read from its flag (given, from its variable, or the
    default); a ``ConfigurationError`` names the flag or variable of a bad one."""
    return {option.name: option.read(getattr(args, option.name)) for option in for_command(command)}


def to_environment(args: argparse.Namespace, environ: MutableMapping[str, str]) -> None:
    """``serve``'s keyword settings, handed to its workers through their variables."""
    for option in for_command("serve"):
        if option.env is not None and option.target == "keyword":
            option.hand_on(getattr(args, option.name), environ)


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``TenantGateway`` keyword arguments the ``TG_*`` variables in ``environ`` set (the
    default for each one unset)."""
    return {
        option.name: option.read(option.environment_text(environ))
        for option in OPTIONS
        if option.env is not None and option.target == "keyword"
    }
