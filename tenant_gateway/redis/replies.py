"""What a failed Redis call says: that Redis serves nothing now (``unreachable``: the circuit
breakers count it), or that the server is no longer the primary (``demoted``: the decisions'
connection asks again where the primary is), rather than that it refused one command."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["demoted", "unreachable"]

# Error replies by which Redis says it serves nothing now, whatever the command: loading its
# data after a restart, a replica after a failover, out of memory or disk, a script running too
# long, a cluster without quorum, a password changed under us. They count as a lost connection.
_SERVER_WIDE = frozenset(
    ("LOADING", "READONLY", "MASTERDOWN", "OOM", "MISCONF", "BUSY", "CLUSTERDOWN", "TRYAGAIN")
    + ("NOREPLICAS", "NOAUTH", "WRONGPASS")
)


def unreachable(exc: BaseException) -> bool:
    """Does ``exc`` say Redis serves nothing now, rather than that it refused one command?"""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return True  # refused, reset, timed out (redis-py files LOADING and NOAUTH here too)
    return isinstance(exc, ResponseError) and not _SERVER_WIDE.isdisjoint(_codes(exc))


def demoted(exc: BaseException) -> bool:
    """Does ``exc`` say the server is no longer the primary (a write refused as ``READONLY``,
    which redis-py's sentinel-managed connections turn into a ``ConnectionError``)?"""
    if isinstance(exc, RedisConnectionError):
        return "now a slave" in str(exc)
    return isinstance(exc, ResponseError) and "READONLY" in _codes(exc)


def _codes(exc: ResponseError) -> set[str | None]:
    # redis-py keeps the reply's code apart; the pipelined connection leaves it first in the
    # text; a script's failed call (Redis 6) quotes it after a '-'
    words = str(exc).split()
    codes = {getattr(exc, "status_code", None), *words[:1]}
    codes.update(word[1:] for word in words if word.startswith("-"))
    return codes
