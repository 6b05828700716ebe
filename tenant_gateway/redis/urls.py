"""Which Redis a ``redis_url`` names, checked before anything connects.

One server: ``redis://``, ``rediss://`` (TLS), ``unix://``, read as redis-py reads them.
A cluster: ``redis+cluster://[user:password@]host:port[,host:port…][?options]`` (the URI form of
the ``limits`` library), or ``rediss+cluster://`` for TLS to every node; the hosts are where
discovery starts, any node of the cluster will do. Options are those of a one-server URL, for
every node; a cluster has one database, so none is named.
The primary of a Sentinel service: ``redis+sentinel://…/service_name[/db]`` or
``rediss+sentinel://`` (``sentinel.py``).

A URL that is malformed or names something unsupported (another scheme, a port that is not
one, a database that is not a number, an option redis-py does not know, TLS options without
TLS) raises ``ConfigurationError`` naming the problem, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, SSLConnection, parse_url

from tenant_gateway.exceptions import ConfigurationError, redact_url
from tenant_gateway.redis.sentinel import SCHEMES as SENTINEL_SCHEMES
from tenant_gateway.redis.sentinel import SentinelURL
from tenant_gateway.redis.sentinel import limits_storage as sentinel_storage

__all__ = ["ClusterURL", "check_redis_url", "cluster_url", "limits_storage"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SERVER_SCHEMES = ("redis", "rediss", "unix")
_TLS_OPTIONS = frozenset(
    ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile")
    + ("ssl_password", "ssl_cert_reqs", "ssl_check_hostname", "ssl_min_version", "ssl_ciphers")
    + ("ssl_include_verify_flags", "ssl_exclude_verify_flags")
)
_OPTIONS = frozenset(URL_QUERY_ARGUMENT_PARSERS) | _TLS_OPTIONS | {"client_name"}
_DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A checked ``redis+cluster://`` URL."""

    url: str
    seeds: tuple[tuple[str, int], ...]
    """The nodes discovery starts from."""
    tls: bool
    userinfo: str
    """``user:password@`` as written (percent-encoded), or ""."""
    query: str

    def node_url(self, host: str, port: int) -> str:
        """The one-server URL of a node, with the cluster URL's credentials and options."""
        scheme = "rediss" if self.tls else "redis"
        where = f"[{host}]" if ":" in host else host
        query = f"?{self.query}" if self.query else ""
        return f"{scheme}://{self.userinfo}{where}:{port}{query}"

    def client_options(self) -> dict[str, Any]:
        """redis-py's connection options for every node (credentials, TLS, timeouts)."""
        options: dict[str, Any] = dict(parse_url(self.node_url(*self.seeds[0])))
        for name in ("host", "port", "db", "path"):
            options.pop(name, None)
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        return options


def _fail(url: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"redis_url {redact_url(url)!r}: {problem}")


def _scheme(url: str) -> str:
    scheme, separator, _ = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _SERVER_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise _fail(
            url,
            "unsupported scheme (use redis://, rediss://, unix://, redis+cluster://,"
            " rediss+cluster://, redis+sentinel:// or rediss+sentinel://)",
        )
    return scheme


def _check_options(url: str, query: str, tls: bool) -> None:
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name not in _OPTIONS:
            raise _fail(url, f"unknown option {name!r}")
        if name == "db" and "cluster" in _scheme(url):
            raise _fail(url, "a cluster has one database: name none")
        if name in _TLS_OPTIONS and not tls:
            raise _fail(url, f"{name} needs TLS (rediss:// or rediss+cluster://)")


def _port(url: str, location: str) -> tuple[str, int]:
    """The host and port of ``location`` (``host[:port]``; redis-py's default host and port)."""
    try:
        parts = urlsplit(f"//{location}")
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise _fail(url, f"bad port in {location!r} (a number from 1 to 65535)")
    return parts.hostname or "localhost", port or _DEFAULT_PORT


def check_redis_url(url: str) -> ClusterURL | None:
    """Check ``url``: a ``ClusterURL`` for a cluster, None for one server (a Sentinel
    service's primary included)."""
    scheme = _scheme(url)
    if scheme in CLUSTER_SCHEMES:
        return cluster_url(url)
    if scheme in SENTINEL_SCHEMES:
        SentinelURL.parse(url)
        return None
    parts = urlsplit(url)
    _check_options(url, parts.query, scheme == "rediss")
    if scheme == "unix":
        if not parts.path:
            raise _fail(url, "no socket path")
    else:
        _port(url, parts.netloc.rpartition("@")[2])
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise _fail(url, f"the database must be a number, not {database!r}")
    try:
        parse_url(url)
    except ValueError as exc:
        raise _fail(url, str(exc)) from None
    return None


def cluster_url(url: str) -> ClusterURL:
    """Check a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    scheme = _scheme(url)
    if scheme not in CLUSTER_SCHEMES:
        raise _fail(url, "not a cluster URL (redis+cluster:// or rediss+cluster://)")
    rest = url.partition("://")[2]
    authority, _, query = rest.partition("?")
    authority, _, path = authority.partition("/")
    if path.strip("/"):
        raise _fail(url, "a cluster has one database: name none")
    userinfo, at, hosts = authority.rpartition("@")
    seeds = tuple(_port(url, location.strip()) for location in hosts.split(",") if location.strip())
    if not seeds:
        raise _fail(url, "no host:port to start from")
    tls = scheme == "rediss+cluster"
    _check_options(url, query, tls)
    found = ClusterURL(url, seeds, tls, userinfo + at, query)
    try:
        found.client_options()
    except ValueError as exc:
        raise _fail(url, str(exc)) from None
    return found


def limits_storage(url: str) -> tuple[str, dict[str, Any]]:
    """The ``limits`` storage URI and options for the shared windows on ``url``'s Redis
    (served by redis-py): a cluster's credentials and TLS go as options, which ``limits`` does
    not read from its ``async+redis+cluster://`` URI."""
    found = check_redis_url(url)
    if url.partition("://")[0].lower() in SENTINEL_SCHEMES:
        storage, options = sentinel_storage(SentinelURL.parse(url), timeout=1.0)
        return f"async+{storage}", dict(options)
    if found is None:
        return f"async+{url}", {}
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in found.seeds)
    return f"async+redis+cluster://{hosts}", found.client_options()
