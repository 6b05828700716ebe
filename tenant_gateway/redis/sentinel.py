"""Redis behind Sentinel: ``redis+sentinel://`` URLs, and clients that follow the primary.

    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?options]
    rediss+sentinel://...   the same over TLS, to the sentinels and to the data nodes

The form is that of ``limits``. The user and password are the data nodes' (Redis's
``requirepass`` or ACL user); the sentinels are asked without credentials unless the query
names theirs: ``sentinel_username``, ``sentinel_password`` (a sentinel's own ``requirepass`` is
a setting of its own, usually unset or different). With ``rediss+sentinel://`` the ``ssl_*``
options of a ``rediss://`` URL apply to both. A port left out is Sentinel's, 26379.

The primary is asked of the sentinels at each new connection (``SENTINEL MASTERS``, its
flags checked: a primary they see down is no answer), so a promotion is followed without a
restart: by redis-py's sentinel-managed pool for the clients (``primary_client``), and through
``locate`` for the hot path's pipelined connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from tenant_gateway.exceptions import ConfigurationError, redact_url

__all__ = ["SCHEMES", "Locate", "SentinelURL", "limits_storage", "locate_for", "primary_client"]

SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = frozenset(("sentinel_username", "sentinel_password"))

Locate = Callable[[], Awaitable[tuple[str, int]]]
"""Where the primary is now (host, port)."""


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    node_url: str
    """The data nodes' URL with no address: their credentials, database and TLS options."""
    sentinel_auth: tuple[str | None, str | None]
    """The sentinels' own user and password."""

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        """Raises ``ConfigurationError`` naming what is wrong (passwords left out)."""
        scheme, _, rest = url.partition("://")
        if scheme not in SCHEMES or not rest:
            raise _malformed(url, f"the scheme must be {' or '.join(SCHEMES)}")
        rest, _, query = rest.partition("?")
        location, _, path = rest.partition("/")
        userinfo, at, hosts = location.rpartition("@")
        sentinels = tuple(_address(url, host) for host in hosts.split(","))
        service, _, db = path.partition("/")
        if not service:
            raise _malformed(url, "no service name (…/service_name[/db])")
        if db.endswith("/"):
            db = db[:-1]
        if db and not (db.isascii() and db.isdigit()):
            raise _malformed(url, f"the database must be a number, not {db!r}")
        options = dict(parse_qsl(query, keep_blank_values=True))
        tls = scheme.startswith("rediss")
        for name in options:
            if name not in _SENTINEL_OPTIONS and not (tls and name.startswith("ssl_")):
                allowed = "sentinel_username, sentinel_password" + (", ssl_*" if tls else "")
                raise _malformed(url, f"unknown option {name!r} (known: {allowed})")
        sentinel_auth = (options.pop("sentinel_username", None) or None,) + (
            options.pop("sentinel_password", None) or None,
        )
        node_url = f"{'rediss' if tls else 'redis'}://{userinfo}{at}primary/{db or 0}"
        if options:
            node_url += "?" + urlencode(options, quote_via=quote)
        try:
            parse_url(node_url)  # the TLS options' values, checked as redis-py reads them
        except ValueError as exc:
            raise _malformed(url, str(exc)) from exc
        return cls(sentinels, unquote(service), node_url, sentinel_auth)

    def node_options(self) -> dict[str, Any]:
        """redis-py's connection options for the data nodes (TLS as ``ssl=True``)."""
        options = dict(parse_url(self.node_url))
        options.pop("host", None)
        options.pop("port", None)
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        return options

    def sentinel_options(self, timeout: float) -> dict[str, Any]:
        """redis-py's connection options for the sentinels: their own credentials, the
        URL's TLS options, and a timeout (a sentinel that does not answer is skipped)."""
        options = {
            name: value
            for name, value in self.node_options().items()
            if name == "ssl" or name.startswith("ssl_")
        }
        username, password = self.sentinel_auth
        options.update(
            username=username,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return options


def _malformed(url: str, reason: str) -> ConfigurationError:
    return ConfigurationError(f"redis_url {redact_url(url)!r}: {reason}")


def _address(url: str, text: str) -> tuple[str, int]:
    """``host[:port]`` or ``[v6 address][:port]``."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise _malformed(url, f"bad sentinel address {text!r}")
        port = port[1:]
    else:
        host, _, port = text.partition(":")
    if not host:
        raise _malformed(url, f"a sentinel address without a host ({text!r}): host:port,…")
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise _malformed(url, f"bad sentinel port in {text!r}")
    return unquote(host), int(port) if port else SENTINEL_PORT


class _PrimaryPool(SentinelConnectionPool):
    """Connections to the service's primary; closing the pool closes the sentinel clients
    it asked, which redis-py leaves open."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


class _BlockingPrimaryPool(_PrimaryPool, BlockingConnectionPool):
    """The same, waiting for a free connection instead of failing (``BlockingConnectionPool``)."""


def primary_client(
    url: SentinelURL, *, timeout: float, blocking: bool = False, **options: Any
) -> aioredis.Redis:
    """A redis-py client of the service's primary: its pool asks the sentinels where the
    primary is at each new connection, and drops a connection whose server turned replica.
    ``timeout`` bounds each question to a sentinel, and with ``blocking`` the wait for a free
    connection. ``options`` are the pool's and the connections' (redis-py's keyword
    arguments)."""
    sentinel = Sentinel(url.sentinels, sentinel_kwargs=url.sentinel_options(timeout))
    pool_class = _BlockingPrimaryPool if blocking else _PrimaryPool
    if blocking:
        options["timeout"] = timeout
    client: aioredis.Redis = sentinel.master_for(
        url.service, connection_pool_class=pool_class, **url.node_options(), **options
    )
    return client


def locate_for(client: aioredis.Redis) -> Locate | None:
    """Where the primary of ``client``'s service is now (asked of its sentinels at each call),
    or None for a client of one fixed server."""
    pool = client.connection_pool
    if not isinstance(pool, _PrimaryPool):
        return None

    async def locate() -> tuple[str, int]:
        asking: Awaitable[tuple[object, object]] = pool.get_master_address()  # type: ignore[no-untyped-call]
        host, port = await asking
        return str(host), int(str(port))

    return locate


def limits_storage(url: SentinelURL, timeout: float) -> tuple[str, Mapping[str, Any]]:
    """The ``limits`` storage URL (without ``async+``) and options of the same service, for
    shared rate limits: the primary only (no stale replica read can let a window overflow)."""
    hosts = ",".join(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in url.sentinels
    )
    options = {
        "use_replicas": False,
        "sentinel_kwargs": url.sentinel_options(timeout),
        **url.node_options(),
    }
    return f"redis+sentinel://{hosts}/{quote(url.service, safe='')}", options
