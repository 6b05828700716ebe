"""Telling every worker process that a tenant or its keys changed.

A change made through the admin API evicts the tenant from this process's key cache at once and
is published on a Redis channel; every other gateway process subscribed to it evicts too, so a
revocation, suspension, deletion or plan change takes effect everywhere within milliseconds.
The key cache's TTL (1 s by default) is the backstop while Redis or the subscription is down.
This module holds the single-process invalidation; across processes it is
``redis/invalidation.py``.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Invalidator", "KeyCache"]


class KeyCache(Protocol):
    """What is invalidated: the key resolver's cache (``resolver.KeyResolver``)."""

    def forget_tenant(self, tenant_id: str) -> None: ...

    def forget_all(self) -> None: ...


class Invalidator:
    """Single-process invalidation (the embedded default)."""

    def __init__(self, resolver: KeyCache) -> None:
        self._resolver = resolver

    async def tenant_changed(self, tenant_id: str) -> None:
        self._resolver.forget_tenant(tenant_id)

    async def run(self) -> None:
        """Nothing to listen to in one process."""
        return None

    async def close(self) -> None:
        return None
