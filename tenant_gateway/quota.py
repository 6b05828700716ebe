"""Usage counters: the monthly quota decision and the per-period usage tallies.

One hash per tenant and period (``{prefix}usage:{tenant}:{YYYY-MM}``) holds every tally:

    calls            admitted calls          rejected         refused calls (all reasons)
    rejected:<why>   refusals by reason      day:<DD>         admitted calls that day
    rday:<DD>        refusals that day       route|<2xx>|<M> <template>   calls by route and status

The quota decision reads and increments ``calls`` atomically (a Lua script on Redis; plain
code with no ``await`` inside on the memory store), so N concurrent calls against a remaining
quota of Q admit exactly min(N, Q). The counter is keyed by tenant and period, never by limit,
so a plan change keeps the month's count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tenant_gateway.exceptions import StoreUnavailable, redact_url

__all__ = [
    "Admission",
    "CounterStore",
    "MemoryCounters",
    "RedisCounters",
    "UsageKey",
]

UsageKey = tuple[str, str]
"""(tenant id, period ``YYYY-MM``)."""

_HISTORY_SECONDS = 400 * 86_400  # keep a period's tallies for 13 months


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    used: int
    """Admitted calls in the period, this one included when admitted."""


class CounterStore(Protocol):
    async def admit(
        self, key: UsageKey, day: str, limit: int | None, allow_overage: bool
    ) -> Admission:
        """Count one call if the quota allows it, else count a ``quota`` refusal."""

    async def reject(self, key: UsageKey, day: str, reason: str) -> None:
        """Count a call refused before the quota check (e.g. by the burst limit)."""

    async def add(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """Add tallies (route and status breakdowns) in one batch."""

    async def read(self, key: UsageKey) -> dict[str, int]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class MemoryCounters:
    """The embedded store; one process only."""

    def __init__(self) -> None:
        self._tallies: defaultdict[UsageKey, Counter[str]] = defaultdict(Counter)

    async def admit(
        self, key: UsageKey, day: str, limit: int | None, allow_overage: bool
    ) -> Admission:
        tally = self._tallies[key]
        used = tally["calls"]
        if limit is not None and used >= limit and not allow_overage:
            tally.update(("rejected", "rejected:quota", "rday:" + day))
            return Admission(False, used)
        tally.update(("calls", "day:" + day))
        return Admission(True, used + 1)

    async def reject(self, key: UsageKey, day: str, reason: str) -> None:
        self._tallies[key].update(("rejected", "rejected:" + reason, "rday:" + day))

    async def add(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        for key, fields in increments.items():
            self._tallies[key].update(fields)

    async def read(self, key: UsageKey) -> dict[str, int]:
        return dict(self._tallies.get(key, {}))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


_ADMIT_SCRIPT = """
local used = tonumber(redis.call('HGET', KEYS[1], 'calls') or '0')
local limit = tonumber(ARGV[1])
if limit >= 0 and used >= limit and ARGV[2] == '0' then
  redis.call('HINCRBY', KEYS[1], 'rejected', 1)
  redis.call('HINCRBY', KEYS[1], 'rejected:quota', 1)
  redis.call('HINCRBY', KEYS[1], 'rday:' .. ARGV[3], 1)
  redis.call('EXPIRE', KEYS[1], ARGV[4], 'NX')
  return {0, used}
end
used = redis.call('HINCRBY', KEYS[1], 'calls', 1)
redis.call('HINCRBY', KEYS[1], 'day:' .. ARGV[3], 1)
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[4], 'NX') end
return {1, used}
"""


class RedisCounters:
    """Counters shared by every worker and host using one Redis."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "tg:",
        timeout: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self._url = url
        self._prefix = key_prefix
        # A blocking pool: a burst of requests waits (up to ``timeout``) for a connection
        # instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT_SCRIPT)

    def _key(self, key: UsageKey) -> str:
        return f"{self._prefix}usage:{key[0]}:{key[1]}"

    def _unavailable(self, exc: RedisError) -> StoreUnavailable:
        return StoreUnavailable("Redis", redact_url(self._url), str(exc) or type(exc).__name__)

    async def admit(
        self, key: UsageKey, day: str, limit: int | None, allow_overage: bool
    ) -> Admission:
        args = (-1 if limit is None else limit, int(allow_overage), day, _HISTORY_SECONDS)
        try:
            admitted, used = await self._admit(keys=[self._key(key)], args=args)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return Admission(bool(admitted), int(used))

    async def reject(self, key: UsageKey, day: str, reason: str) -> None:
        await self.add({key: {"rejected": 1, "rejected:" + reason: 1, "rday:" + day: 1}})

    async def add(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, fields in increments.items():
                    name = self._key(key)
                    for field, amount in fields.items():
                        pipe.hincrby(name, field, amount)
                    pipe.expire(name, _HISTORY_SECONDS, nx=True)
                await pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def read(self, key: UsageKey) -> dict[str, int]:
        try:
            raw = await self._redis.hgetall(self._key(key))
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return {
            (field.decode() if isinstance(field, bytes) else field): int(value)
            for field, value in raw.items()
        }

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        await self._redis.aclose()
