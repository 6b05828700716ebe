"""PostgreSQL URLs: checked once, and split into what asyncpg connects with and the options the
gateway takes from the query string itself.

``statement_cache_size``, ``pool_min_size`` and ``pool_max_size`` are the gateway's: asyncpg
would send any query parameter it does not know to the server as a setting, which PostgreSQL
refuses (``unrecognized configuration parameter``) and so does PgBouncer (``unsupported startup
parameter``). ``?statement_cache_size=0`` is what PgBouncer in transaction pooling mode needs:
asyncpg then names no prepared statement, since a named one stays on the server connection the
transaction ran on, which PgBouncer hands to another client next.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit

from tenant_gateway.exceptions import ConfigurationError, redact_url

__all__ = [
    "DEFAULT_POOL_MAX_SIZE",
    "DEFAULT_POOL_MIN_SIZE",
    "DEFAULT_STATEMENT_CACHE_SIZE",
    "GATEWAY_PARAMETERS",
    "PostgresUrl",
    "parse_postgres_url",
]

DEFAULT_STATEMENT_CACHE_SIZE = 100  # asyncpg's own default
DEFAULT_POOL_MIN_SIZE = 1
DEFAULT_POOL_MAX_SIZE = 10
GATEWAY_PARAMETERS = ("statement_cache_size", "pool_min_size", "pool_max_size")
"""Query parameters of ``database_url`` the gateway reads (never sent to the server)."""
_SCHEMES = ("postgres", "postgresql")
_LARGEST = 100_000  # far beyond any server's connections; asyncpg sizes a list by the pool's max


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    dsn: str
    """The URL asyncpg connects with: the one given, without the gateway's parameters."""
    statement_cache_size: int
    """Prepared statements asyncpg keeps per connection (``asyncpg.connect``'s option)."""
    pool_min_size: int
    pool_max_size: int


def parse_postgres_url(url: str) -> PostgresUrl:
    """``url`` checked (scheme, ports, the gateway's parameters) and split; a
    ``ConfigurationError`` naming the problem otherwise (the password never shown)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced IPv6 bracket: not even redactable as a URL
        raise ConfigurationError(f"database_url is not a URL: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(f"database_url must be postgresql://…, got {redact_url(url)}")
    for host in parts.netloc.rpartition("@")[2].split(","):
        _check_port(host)
    kept: list[str] = []
    given: dict[str, int] = {}
    for pair in parts.query.split("&") if parts.query else ():
        name, _, value = pair.partition("=")
        name = unquote_plus(name)
        if name not in GATEWAY_PARAMETERS:
            kept.append(pair)
            continue
        if name in given:
            raise ConfigurationError(f"database_url gives {name} twice")
        given[name] = _count(name, unquote_plus(value), minimum=int(name == "pool_max_size"))
    low = given.get("pool_min_size", DEFAULT_POOL_MIN_SIZE)
    high = given.get("pool_max_size", DEFAULT_POOL_MAX_SIZE)
    if low > high:
        default = "" if "pool_max_size" in given else ", the default"
        raise ConfigurationError(
            f"database_url: pool_min_size ({low}) is more than pool_max_size ({high}{default})"
        )
    dsn = url
    if given:  # as text: urlunsplit would make postgresql:///db (a local socket) postgresql:/db
        query = "?" + "&".join(kept) if kept else ""
        dsn = url.partition("?")[0] + query + ("#" + parts.fragment if parts.fragment else "")
    cache = given.get("statement_cache_size", DEFAULT_STATEMENT_CACHE_SIZE)
    return PostgresUrl(dsn, cache, low, high)


def _check_port(host: str) -> None:
    """A host of the URL's host list is ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``."""
    port = host.rpartition("]")[2] if host.startswith("[") else host
    if ":" not in port:
        return
    digits = port.rpartition(":")[2]
    if not (digits.isascii() and digits.isdigit() and len(digits) < 6 and 0 < int(digits) < 65536):
        raise ConfigurationError(
            f"database_url has a port that is not a number from 1 to 65535: {_cut(digits)}"
        )


def _count(name: str, value: str, *, minimum: int) -> int:
    # ASCII digits only: int() would take "²", "+1" and " 1" too.
    if value.isascii() and value.isdigit() and len(value) < 20:
        count = int(value)
        if minimum <= count <= _LARGEST:
            return count
    raise ConfigurationError(
        f"database_url: {name} must be a whole number from {minimum} to {_LARGEST},"
        f" got {_cut(value)}"
    )


def _cut(value: str) -> str:
    return repr(value if len(value) <= 20 else value[:20] + "…")
