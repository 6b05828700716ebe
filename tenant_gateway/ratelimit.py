"""The per-second burst limit.

By default the window lives in process memory: each worker process enforces the plan's burst
rate on its own share of the traffic. It is a sliding-window counter (the algorithm of
``limits``' ``SlidingWindowCounterRateLimiter``): per tenant, the count of the current second
and of the one before, the latter weighted by how much of it the sliding second still covers.
That is O(1) time and memory per tenant, and decided inline: on this machine ``limits``' own
async memory limiters took 10–25 µs a call with the stats the headers need (more than the rest
of the gateway together), this about 1 µs.

Pass a ``limits`` storage URI (e.g. ``async+redis://…``, served by redis-py) to share one window
across processes: then ``limits``' moving window decides, at one more round trip.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError as LimitsConfigurationError
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.exceptions import RedisError

from tenant_gateway.clock import Clock
from tenant_gateway.exceptions import (
    BurstRefused,
    ConfigurationError,
    StoreUnavailable,
    redact_url,
)

__all__ = ["BurstLimiter"]

IN_PROCESS = "async+memory://"
_SWEEP_EVERY = 10_000  # new tenant windows between sweeps of idle ones


class _Window:
    __slots__ = ("current", "previous", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.current = 0
        self.previous = 0


class BurstLimiter:
    def __init__(self, storage_uri: str, clock: Clock) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._until_sweep = _SWEEP_EVERY
        self._shared: MovingWindowRateLimiter | None = None
        self._items: dict[int, RateLimitItem] = {}
        if storage_uri != IN_PROCESS:
            # On Redis, limits defaults to the coredis client; use redis-py, already here.
            scheme, shown = storage_uri.split(":")[0], redact_url(storage_uri)
            options = {"implementation": "redispy"} if "redis" in scheme else {}
            if scheme == "async+redis+cluster" and "?" in storage_uri:
                # limits would drop them silently: TLS or a password would just not be used
                raise ConfigurationError(
                    f"burst_storage {shown!r}: limits reads no options from an"
                    " async+redis+cluster:// URI (a TLS cluster cannot hold the burst window)"
                )
            try:
                storage = storage_from_string(storage_uri, **options)
            except LimitsConfigurationError as exc:  # an unknown scheme, a malformed URI
                problem = str(exc).replace(storage_uri, shown)
                raise ConfigurationError(f"burst_storage {shown!r}: {problem}") from None
            if not isinstance(storage, Storage):
                raise ConfigurationError(f"burst storage {storage_uri!r} is not an async+ storage")
            self._shared = MovingWindowRateLimiter(storage)

    @property
    def shared(self) -> bool:
        """Whether the window lives in a shared store (``await acquire(…)``), not in process."""
        return self._shared is not None

    def take(self, tenant_id: str, per_second: int) -> int:
        """Take one slot in the tenant's in-process sliding second, inline: the slots left after
        it, or ``BurstRefused``. (An int, not a decision object: this is the hot path.)"""
        now = self._clock()
        second = int(now)
        window = self._windows.get(tenant_id)
        if window is None:
            window = self._windows[tenant_id] = _Window(second)
            self._sweep(second)
        elif window.second != second:
            window.previous = window.current if window.second == second - 1 else 0
            window.current = 0
            window.second = second
        estimate = window.previous * (1.0 - (now - second)) + window.current
        if estimate + 1 > per_second:
            raise BurstRefused(1)
        window.current += 1
        return int(per_second - estimate - 1)

    async def acquire(self, tenant_id: str, per_second: int) -> int:
        """Take one slot, wherever the window lives: the slots left, or ``BurstRefused``."""
        if self._shared is None:
            return self.take(tenant_id, per_second)
        item = self._items.get(per_second)
        if item is None:
            item = self._items[per_second] = RateLimitItemPerSecond(per_second)
        try:
            allowed = await self._shared.hit(item, tenant_id)
            stats = await self._shared.get_window_stats(item, tenant_id)
        except (RedisError, StorageError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise StoreUnavailable("Redis", "the shared burst window", reason) from exc
        if not allowed:
            # limits keeps its windows by the wall clock, whatever clock was injected here.
            raise BurstRefused(max(1, math.ceil(stats.reset_time - time.time())))
        return stats.remaining

    def _sweep(self, second: int) -> None:
        """Now and then, forget tenants idle for two seconds (their windows are empty)."""
        self._until_sweep -= 1
        if self._until_sweep > 0:
            return
        self._until_sweep = _SWEEP_EVERY
        idle = [tid for tid, window in self._windows.items() if window.second < second - 1]
        for tenant_id in idle:
            del self._windows[tenant_id]

    def __len__(self) -> int:
        """Tenants whose in-process window is kept."""
        return len(self._windows)
