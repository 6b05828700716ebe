"""Limits per client address: sign-up attempts and failed authentications.

The client is the peer address in the ASGI scope (``scope["client"]``), which uvicorn rewrites
from ``X-Forwarded-For`` only for the proxies it is told to trust (``serve
--forwarded-allow-ips``); a header alone never changes it. IPv4 clients are counted per address,
IPv6 clients per /64 (one site's usual allocation: a host may pick any address inside it).

Each limit is a moving window of a ``limits`` rate string (``"10/minute"``): exact, with no
double burst at a window boundary. In process it is decided inline on the injected clock: per
address, the times of at most ``amount`` attempts, idle addresses swept now and then. (``limits``'
own memory storage reads the wall clock and sweeps with a thread hop per key, costly under the
floods of addresses these limits exist for.) Given a ``limits`` async storage URI (the gateway's
Redis), the window is ``limits``' moving window, shared by every process; an address it refuses
is remembered in process until its window frees, so a flood from it costs no more round trips.

The addresses kept in process are bounded (``max_addresses``, 10,000 by default, about 9 MB):
past it, the address idle the longest is forgotten, and starts afresh if it comes back. Only
an address with no attempt since more than ``max_addresses`` others had one can be forgotten,
and each of those others had a full window of its own: rotating addresses to forget one gains
nothing that the rotation did not give already.

``begin``/``end`` bracket an attempt that may count while it is being decided (a key lookup):
at most ``in_flight`` at once per address, and never more than the window still has room for,
so a burst of concurrent attempts cannot all pass the check before the first of them counts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.exceptions import RedisError

from tenant_gateway.clock import Clock
from tenant_gateway.exceptions import ConfigurationError, StoreUnavailable

__all__ = ["ClientLimiter", "client_address", "limiter_for", "parse_rate"]

UNLIMITED = "unlimited"
_SWEEP_EVERY = 1_000  # new addresses between sweeps of idle ones
MAX_ADDRESSES = 10_000
"""Addresses one limiter keeps state for (about 900 bytes each): the least recently seen go."""
IN_FLIGHT = 4
"""Attempts one address may have being decided at once (``begin``)."""


def parse_rate(rate: str | None, setting: str) -> RateLimitItem | None:
    """``"10/minute"`` → the ``limits`` item; None or ``"unlimited"`` → None (no limit)."""
    if rate is None or rate.strip().lower() == UNLIMITED:
        return None
    try:
        items = parse_many(rate)
    except ValueError as exc:
        raise ConfigurationError(
            f"{setting} {rate!r} is not a rate such as '10/minute' (or 'unlimited')"
        ) from exc
    if len(items) != 1 or items[0].amount < 1:
        raise ConfigurationError(f"{setting} {rate!r} must be one rate of at least 1")
    return items[0]


def limiter_for(
    rate: str | None,
    setting: str,
    clock: Clock,
    *,
    storage: tuple[str, Mapping[str, Any]] | None = None,
    key_prefix: str = "",
) -> ClientLimiter | None:
    """The limiter for a rate setting (None when unlimited): in process, or shared on Redis
    (``storage``: a ``limits`` storage URI and its options)."""
    item = parse_rate(rate, setting)
    if item is None:
        return None
    uri, options = storage or (None, {})
    name = setting.removesuffix("_rate")
    return ClientLimiter(
        item, clock, name=name, storage_uri=uri, storage_options=options, key_prefix=key_prefix
    )


def client_address(scope: Any) -> str:
    """The address the per-client limits count under: the peer's IPv4 address, its IPv6 /64,
    or, for a peer that is not an IP address (a Unix socket, a test client), its name."""
    client = scope.get("client")
    if not client:
        return ""
    host: str = client[0]
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ClientLimiter:
    def __init__(
        self,
        item: RateLimitItem,
        clock: Clock,
        *,
        name: str,
        storage_uri: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        key_prefix: str = "",
        max_addresses: int = MAX_ADDRESSES,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self.item = item
        self.name = name
        self._amount = item.amount
        self._seconds = float(item.get_expiry())
        self._clock = clock
        self._max_addresses = max_addresses
        self._in_flight = in_flight
        # Least recently seen first: the end that goes when there are too many.
        self._windows: OrderedDict[str, deque[float]] = OrderedDict()
        self._refused: OrderedDict[str, float] = OrderedDict()
        """Shared window only: addresses refused, until when (the injected clock)."""
        self._running: dict[str, int] = {}
        """Attempts begun and not ended, per address."""
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        """Attempts waiting for room, per address, first come first: an attempt that ends
        wakes one of them, not all (thousands may wait behind one address)."""
        self._until_sweep = _SWEEP_EVERY
        self._shared: MovingWindowRateLimiter | None = None
        self._storage: Storage | None = None
        if storage_uri is not None:
            storage = storage_from_string(
                storage_uri,
                implementation="redispy",  # limits defaults to coredis; redis-py is already here
                key_prefix=f"{key_prefix}limits",
                **{"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **(storage_options or {})},
            )
            if not isinstance(storage, Storage):
                raise ConfigurationError(f"{storage_uri!r} is not an async+ storage")
            self._storage = storage
            self._shared = MovingWindowRateLimiter(storage)

    def over(self, address: str) -> int:
        """Seconds until ``address`` may try again (0: it may now), without I/O or counting."""
        now = self._clock()
        if self._shared is not None:
            until = self._refused.get(address)
            if until is None:
                return 0
            if until <= now:
                del self._refused[address]
                return 0
            return max(1, math.ceil(until - now))
        window = self._windows.get(address)
        return 0 if window is None else self._wait(window, now)

    def _room(self, address: str) -> int:
        """Attempts the address may still make in its window (after ``over`` said 0)."""
        if self._shared is not None:
            return self._amount  # the shared window's count is in Redis, not here
        window = self._windows.get(address)
        return self._amount - (0 if window is None else len(window))

    async def begin(self, address: str) -> int:
        """Start an attempt that may count: 0 when it may go ahead (then ``hit`` if it failed,
        and ``end`` in any case), else the seconds to wait. Waits while the address has
        ``in_flight`` attempts under way, or as many as its window has room for.

        Waiters are woken one at a time, each by the end of an attempt or by the waiter before
        it that went ahead with room to spare or was refused: one wake-up per waiter, however
        many wait (waking them all at each end costs a wake-up per waiter per attempt)."""
        while True:
            wait = self.over(address)
            if wait:
                self._wake(address)  # refused: the next waiter learns it too
                return wait
            running = self._running.get(address, 0)
            room = min(self._in_flight, self._room(address))
            if running < room:
                self._running[address] = running + 1
                if running + 1 < room:
                    self._wake(address)
                return 0
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(address, deque()).append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(address)  # woken, then cancelled: the turn passes on
                else:
                    self._forget_waiter(address, waiter)
                raise

    def end(self, address: str) -> None:
        """An attempt ``begin`` let go ahead is decided (and counted by ``hit`` if it failed)."""
        running = self._running.pop(address) - 1
        if running:
            self._running[address] = running
        self._wake(address)

    def _wake(self, address: str) -> None:
        """Let the first attempt waiting on ``address`` look again."""
        waiting = self._waiting.get(address)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if waiting is not None and not waiting:
            del self._waiting[address]

    def _forget_waiter(self, address: str, waiter: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(address)
        if waiting is not None:
            try:
                waiting.remove(waiter)
            except ValueError:
                pass
            if not waiting:
                del self._waiting[address]

    async def hit(self, address: str) -> int:
        """Count one attempt: 0 when it is within the limit, else the seconds to wait (and the
        attempt is not counted). ``StoreUnavailable`` when the shared window is unreachable."""
        if self._shared is None:
            return self.take(address)
        try:
            if await self._shared.hit(self.item, self.name, address):
                return 0
            stats = await self._shared.get_window_stats(self.item, self.name, address)
        except (RedisError, StorageError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise StoreUnavailable("Redis", f"the {self.name} limit", reason) from exc
        # limits keeps its window by the wall clock, whatever clock was injected here.
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        now = self._clock()
        self._refused[address] = now + wait
        self._refused.move_to_end(address)
        self._sweep(now)
        if len(self._refused) > self._max_addresses:
            self._refused.popitem(last=False)  # it costs one more round trip, if it comes back
        return wait

    def take(self, address: str) -> int:
        """``hit`` on the in-process window, inline."""
        now = self._clock()
        window = self._windows.get(address)
        if window is None:
            window = self._windows[address] = deque()
            self._sweep(now)
            if len(self._windows) > self._max_addresses:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(address)
        wait = self._wait(window, now)
        if not wait:
            window.append(now)
        return wait

    def _wait(self, window: deque[float], now: float) -> int:
        """Drop the attempts the window no longer covers; the wait if it is still full."""
        start = now - self._seconds
        while window and window[0] <= start:
            window.popleft()
        if len(window) < self._amount:
            return 0
        return max(1, math.ceil(window[0] + self._seconds - now))

    def _sweep(self, now: float) -> None:
        """Now and then, forget addresses whose window is empty (or whose refusal is over)."""
        self._until_sweep -= 1
        if self._until_sweep > 0:
            return
        self._until_sweep = _SWEEP_EVERY
        start = now - self._seconds
        for address in [a for a, w in self._windows.items() if not w or w[-1] <= start]:
            del self._windows[address]
        for address in [a for a, until in self._refused.items() if until <= now]:
            del self._refused[address]

    async def close(self) -> None:
        """Close the shared window's Redis client (``limits`` has no close of its own)."""
        bridge = getattr(self._storage, "bridge", None)
        client: Any = getattr(bridge, "storage", None)
        if client is not None:
            await client.aclose()

    def __len__(self) -> int:
        """Addresses this process keeps state for."""
        return len(self._windows) + len(self._refused)
