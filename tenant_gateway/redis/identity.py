"""Which Redis a connection reached: a primary, a replica or a sentinel, and which lifetime of
which data set it holds.

The counters stamp each usage hash with the *lineage* of the server it was last checked
against the ledger on (``counters.py``). The lineage is drawn from the server's run id, which
changes at every restart, and its replication id, which changes whenever a node becomes a
primary (a promotion) or takes another primary's data (a demotion): so a hash whose stamp is
not the server's own lineage may have lost writes since it was checked, whichever way the
server changed, whoever was connected when it did.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from redis import exceptions as errors

from tenant_gateway.redis.pipeline import bulk

__all__ = [
    "UNKNOWN_LINEAGE",
    "Ask",
    "ServerIdentity",
    "ServerWatch",
    "identify",
    "lineage_of",
    "parse_info",
    "refusal_of",
]

logger = logging.getLogger("tenant_gateway.quota")

Ask = Callable[..., Awaitable[Any]]
"""Send one command on a connection and wait for its reply (an error reply is returned)."""

UNKNOWN_LINEAGE = 1
"""The lineage of a server that will not say (INFO refused): the stamp hashes have always had."""


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    run_id: str
    replication_id: str
    role: str
    """``master``, ``slave`` or ``sentinel``."""
    mode: str
    """``standalone``, ``sentinel`` or ``cluster`` (``redis_mode``)."""

    @classmethod
    def from_info(
        cls, server: Mapping[str, object], replication: Mapping[str, object]
    ) -> ServerIdentity:
        """From ``INFO server`` and ``INFO replication``, as parsed (by ``parse_info`` or by
        redis-py)."""
        mode = str(server.get("redis_mode", "standalone"))
        role = "sentinel" if mode == "sentinel" else str(replication.get("role", "master"))
        return cls(
            run_id=str(server.get("run_id", "")),
            replication_id=str(replication.get("master_replid", "")),
            role=role,
            mode=mode,
        )

    @property
    def lineage(self) -> int:
        """This server lifetime's data set, as a number a tally field can hold (48 bits)."""
        if not self.run_id:
            return UNKNOWN_LINEAGE
        digest = hashlib.sha256(f"{self.run_id}:{self.replication_id}".encode()).digest()
        return int.from_bytes(digest[:6], "big") | 2  # never UNKNOWN_LINEAGE

    def refusal(self) -> str | None:
        """Why the counters cannot be kept on this server (None: they can)."""
        if self.role == "sentinel":
            return (
                "it is a Redis Sentinel, not a data node: name the service with"
                " redis+sentinel://host:port[,host:port...]/service_name"
            )
        if self.role != "master":
            return (
                "it is a replica, read-only: point the URL at the primary, or follow the"
                " primary with redis+sentinel://"
            )
        return None


async def identify(ask: Ask) -> ServerIdentity | None:
    """The identity of the server behind ``ask``, or None when it will not say (an ACL that
    refuses INFO): then nothing can be told apart, and nothing is refused."""
    # both sent before either reply; gathered, so a lost connection fails both as one
    server, replication = await asyncio.gather(ask("INFO", "server"), ask("INFO", "replication"))
    if isinstance(server, errors.ResponseError) or isinstance(replication, errors.ResponseError):
        return None
    return ServerIdentity.from_info(parse_info(server), parse_info(replication))


def parse_info(text: bytes | str) -> dict[str, str]:
    """``INFO``'s ``name:value`` lines (comments and blank lines left out)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and not name.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


def lineage_of(server: object, replication: object) -> int:
    """The lineage from redis-py's ``INFO server`` and ``INFO replication`` answers (an error
    in their place, INFO refused: ``UNKNOWN_LINEAGE``)."""
    if isinstance(server, Mapping) and isinstance(replication, Mapping):
        return ServerIdentity.from_info(server, replication).lineage
    return UNKNOWN_LINEAGE


def refusal_of(server: object, replication: object) -> str | None:
    """``ServerIdentity.refusal`` from redis-py's answers (None when INFO was refused)."""
    if isinstance(server, Mapping) and isinstance(replication, Mapping):
        return ServerIdentity.from_info(server, replication).refusal()
    return None


class ServerWatch:
    """The server the hot path's connection reached last: ``greet`` is that connection's hook
    (``pipeline.py``). It refuses a server that cannot hold the counters, and keeps the
    lineage every decision carries (``lineage``, and ``packed`` as RESP)."""

    def __init__(self) -> None:
        self.lineage = UNKNOWN_LINEAGE
        self.packed = bulk(UNKNOWN_LINEAGE)

    async def greet(self, ask: Ask) -> None:
        identity = await identify(ask)
        refusal = None if identity is None else identity.refusal()
        if refusal is not None:
            raise errors.ConnectionError(refusal)
        lineage = UNKNOWN_LINEAGE if identity is None else identity.lineage
        if lineage != self.lineage:
            self.lineage, self.packed = lineage, bulk(lineage)
            logger.info("Redis data set %s: usage hashes are checked against the ledger", lineage)
