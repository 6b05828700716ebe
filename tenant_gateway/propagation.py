"""Telling every worker process that a tenant or its keys changed.

A change made through the admin API evicts the tenant from this process's key cache at once and
is published on a Redis channel; every other gateway process subscribed to it evicts too, so a
revocation, suspension, deletion or plan change takes effect everywhere within milliseconds.
While the subscription works, the channel also *confirms* it to the key cache (heartbeats that
come back behind every message published before them), and the cache trusts its entries for its
long TTL; without confirmations, for its short TTL (``resolver.py``). This module holds the
single-process invalidation; across processes it is ``redis/invalidation.py``.
"""

from __future__ import annotations

import math
from typing import Protocol

__all__ = ["Invalidator", "KeyCache"]


class KeyCache(Protocol):
    """What is invalidated: the key resolver's cache (``resolver.KeyResolver``)."""

    def forget_tenant(self, tenant_id: str) -> None: ...

    def forget_all(self) -> None: ...

    def confirm(self, moment: float) -> None: ...


class Invalidator:
    """Single-process invalidation (the embedded default).

    ``sole_directory``: the tenant directory lives in this process's memory, so every change to
    it is made here and evicts at once; nothing can change behind the cache's back, which may
    then keep its entries for its long TTL. A directory other processes share (PostgreSQL)
    without a channel to hear their changes on is not: the cache keeps its short TTL."""

    def __init__(self, resolver: KeyCache, *, sole_directory: bool = False) -> None:
        self._resolver = resolver
        if sole_directory:
            resolver.confirm(math.inf)

    async def tenant_changed(self, tenant_id: str) -> None:
        self._resolver.forget_tenant(tenant_id)

    async def run(self) -> None:
        """Nothing to listen to in one process."""
        return None

    async def listening(self) -> None:
        """Once changes are heard (at once here)."""
        return None

    async def close(self) -> None:
        return None
