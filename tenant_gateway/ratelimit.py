"""The per-second burst limit, built on the ``limits`` library's async API.

By default the window lives in process memory (``async+memory://``): each worker process
enforces the plan's burst rate on its own share of the traffic. Pass a ``limits`` storage URI
(e.g. ``async+redis://…``) to share the window across processes, at one more round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from tenant_gateway.clock import Clock
from tenant_gateway.exceptions import ConfigurationError

__all__ = ["BurstDecision", "BurstLimiter"]


@dataclass(frozen=True, slots=True)
class BurstDecision:
    remaining: int
    retry_after: int


class BurstLimiter:
    def __init__(self, storage_uri: str, clock: Clock) -> None:
        storage = storage_from_string(storage_uri)
        if not isinstance(storage, Storage):
            raise ConfigurationError(f"burst storage {storage_uri!r} is not an async+ storage")
        self._limiter = MovingWindowRateLimiter(storage)
        self._items: dict[int, RateLimitItem] = {}
        self._clock = clock

    def _item(self, per_second: int) -> RateLimitItem:
        item = self._items.get(per_second)
        if item is None:
            item = self._items[per_second] = RateLimitItemPerSecond(per_second)
        return item

    async def hit(self, tenant_id: str, per_second: int) -> bool:
        """Take one slot in the tenant's one-second window; False when it is full."""
        return await self._limiter.hit(self._item(per_second), tenant_id)

    async def stats(self, tenant_id: str, per_second: int) -> BurstDecision:
        window = await self._limiter.get_window_stats(self._item(per_second), tenant_id)
        wait = max(1, math.ceil(window.reset_time - self._clock()))
        return BurstDecision(window.remaining, wait)
