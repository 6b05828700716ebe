"""Usage counters: the monthly quota decision and the per-period tallies.

One hash per tenant and period (``<prefix>usage:{<tenant id>}:<YYYY-MM>``; the braces are literal,
a Redis Cluster hash tag: all of a tenant's periods map to one slot) holds every tally, and
every field only ever grows (so a snapshot of it can be written to the ledger idempotently):

    calls         admitted calls              refunded       admitted calls not billed (5xx)
    rejected      refused calls, all reasons  rejected:<why> refusals by reason (quota, burst)
    day:<DD>      admitted calls that day     rday:<DD>      refusals that day
    refday:<DD>   refunds that day            route|<2xx>|<M> <template>   answered calls
    hydrated      set once the hash holds the ledger's counts (see below)

A hash takes at most ``MAX_ROUTES`` distinct route fields: calls on any further route count
under ``route|<2xx>|(other routes)``, so no tenant can grow its hash (and every read and
snapshot of it) by calling ever new paths.

The quota decision reads and increments ``calls`` atomically — a Lua script on Redis, plain
code with no ``await`` inside on the memory store — so N concurrent calls against a remaining
quota of Q admit exactly min(N, Q). The hash is keyed by tenant and period, never by limit.

Rehydration: a hash without ``hydrated`` (a new period, or Redis lost its data) is first filled
from the durable ledger, atomically and once, before any decision is taken on it.

Hostile or corrupt values: every value that enters a hash is a tally in ``0..MAX_TALLY``
(``tallies.py``). This module holds the store's contract (``CounterStore``), the rules both
stores share and the embedded store (``MemoryCounters``); the Redis store is
``redis/counters.py``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tenant_gateway.flights import Flights
from tenant_gateway.models import UsageKey
from tenant_gateway.tallies import (
    HYDRATED,
    MAX_ROUTES,
    MAX_TALLY,
    OTHER_ROUTES,
    field_name,
    sound_tallies,
    tally_value,
)

__all__ = [
    "Admission",
    "CounterStore",
    "DirtyKeys",
    "HydrateSource",
    "MemoryCounters",
    "refunds_last",
]

HydrateSource = Callable[[UsageKey], Awaitable[Mapping[str, int]]]
"""Where a missing hash is restored from: the ledger's last snapshot."""

logger = logging.getLogger("tenant_gateway.quota")


async def _nothing_to_restore(key: UsageKey) -> Mapping[str, int]:
    return {}


@dataclass(slots=True)  # not frozen: one is built per call, and frozen doubles that cost
class Admission:
    admitted: bool
    used: int
    """Billable calls in the period, this one included when admitted."""


class CounterStore(Protocol):
    def admit(
        self, key: UsageKey, day: str, limit: int | None, allow_overage: bool
    ) -> Awaitable[Admission]:
        """Count one call if the quota allows it, else count a ``quota`` refusal."""

    async def add(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """Add tallies (breakdowns, refunds) in one batch. The store owes them from then on:
        each is added exactly once, now or, if this call fails, by a later one. An increment
        the counters cannot take is logged and dropped; it never fails the others."""

    async def read(self, key: UsageKey) -> dict[str, int]:
        """Every tally of a period, restored from the ledger first if need be."""

    async def snapshots(self, keys: Iterable[UsageKey]) -> dict[UsageKey, dict[str, int]]:
        """Current tallies of hydrated hashes (a hash not yet restored is left out)."""

    def drain_dirty(self) -> set[UsageKey]:
        """The keys this process changed since the last drain."""

    async def forget(self, keys: Iterable[UsageKey]) -> None:
        """Drop live tallies so the next use restores them from the ledger."""

    def mark_dirty(self, keys: Iterable[UsageKey]) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class DirtyKeys:
    """What both stores share: the keys changed since the last drain, the restores from the
    ledger (one read per hash however many calls find it missing at once), and the increments
    owed to the counters (taken in by ``add``, not added yet)."""

    def __init__(self, hydrate_from: HydrateSource | None) -> None:
        self._dirty: set[UsageKey] = set()
        self._hydrate_from = hydrate_from or _nothing_to_restore
        self._restores: Flights[UsageKey, Mapping[str, int]] = Flights("restoring usage")
        self._owed: defaultdict[UsageKey, Counter[str]] = defaultdict(Counter)

    async def _restored(self, key: UsageKey) -> dict[str, int]:
        """The ledger's counts for ``key`` that a counter may hold."""
        restored = await self._restores.join(key, lambda: self._hydrate_from(key))
        return sound_tallies(restored, f"the ledger's {key[0]} {key[1]}")

    def _owe(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """Take ``increments`` in; an amount that is not a tally, or a field the ledger could
        not hold, is logged and dropped."""
        for key, fields in increments.items():
            for field, amount in fields.items():
                number = tally_value(amount)
                if number is None or field_name(field) is None:
                    logger.warning(
                        "usage increment dropped: %s %s %.80r += %.40r", *key, field, amount
                    )
                elif number:
                    self._owed[key][field] += number

    def drain_dirty(self) -> set[UsageKey]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def mark_dirty(self, keys: Iterable[UsageKey]) -> None:
        self._dirty.update(keys)


class MemoryCounters(DirtyKeys):
    """The embedded store; one process only."""

    def __init__(self, hydrate_from: HydrateSource | None = None) -> None:
        super().__init__(hydrate_from)
        self._tallies: defaultdict[UsageKey, Counter[str]] = defaultdict(Counter)

    async def _hydrate(self, key: UsageKey) -> Counter[str]:
        tally = self._tallies[key]
        if HYDRATED not in tally:
            restored = await self._restored(key)
            tally = self._tallies[key]  # no await between this check and the update below
            if HYDRATED not in tally:
                for field, amount in restored.items():
                    if not _refused(tally[field], amount, field, None):
                        tally[field] += amount
                tally[HYDRATED] = 1
        return tally

    async def admit(
        self, key: UsageKey, day: str, limit: int | None, allow_overage: bool
    ) -> Admission:
        tally = self._tallies.get(key)
        if tally is None or HYDRATED not in tally:
            tally = await self._hydrate(key)
        self._dirty.add(key)
        used = tally["calls"] - tally["refunded"]
        if limit is not None and used >= limit and not allow_overage:
            tally.update(("rejected", "rejected:quota", "rday:" + day))
            return Admission(False, used)
        tally["calls"] += 1
        tally["day:" + day] += 1
        return Admission(True, used + 1)

    async def add(self, increments: Mapping[UsageKey, Mapping[str, int]]) -> None:
        self._owe(increments)
        while missing := [k for k in self._owed if HYDRATED not in self._tallies.get(k, ())]:
            for key in missing:
                await self._hydrate(key)  # may fail (the ledger is away): all stays owed
        owed, self._owed = self._owed, defaultdict(Counter)
        for key, fields in owed.items():  # no await from here: added as one step
            tally = self._tallies[key]
            routes: int | None = None  # the hash's distinct routes, counted when a new one comes
            for field, amount in refunds_last(fields):
                if field not in tally and _route(field):
                    routes = sum(map(_route, tally)) if routes is None else routes
                    if routes >= MAX_ROUTES:
                        field = _other_routes(field)
                    else:
                        routes += 1
                reason = _refused(tally[field], amount, field, tally["calls"])
                if reason:
                    logger.warning("usage increment dropped: %s %s %r: %s", *key, field, reason)
                else:
                    tally[field] += amount
        self._dirty.update(owed)

    async def read(self, key: UsageKey) -> dict[str, int]:
        return dict(await self._hydrate(key))

    async def snapshots(self, keys: Iterable[UsageKey]) -> dict[UsageKey, dict[str, int]]:
        return {
            key: dict(self._tallies[key]) for key in keys if HYDRATED in self._tallies.get(key, ())
        }

    async def forget(self, keys: Iterable[UsageKey]) -> None:
        self._restores.forget()
        for key in keys:
            self._tallies.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def refunds_last(fields: Mapping[str, int]) -> list[tuple[str, int]]:
    """A batch's increments with ``refunded`` last: its check sees the batch's own calls."""
    return sorted(fields.items(), key=lambda item: item[0] == "refunded")


def _route(field: str) -> bool:
    """Is ``field`` a route tally, one of the ``MAX_ROUTES`` a hash takes (the rule of
    ``redis/lua/add.lua``)?"""
    return field.startswith("route|") and not field.endswith("|" + OTHER_ROUTES)


def _other_routes(field: str) -> str:
    """Where a route beyond ``MAX_ROUTES`` counts: its status class's other routes."""
    return f"route|{field.split('|', 2)[1]}|{OTHER_ROUTES}"


def _refused(current: int, amount: int, field: str, calls: int | None) -> str | None:
    """Why a tally cannot take ``amount`` (the rule of ``redis/lua/add.lua``), or None."""
    if current + amount > MAX_TALLY:
        return "the sum would pass the bound"
    if field == "refunded" and calls is not None and current + amount > calls:
        return "more refunds than calls"
    return None
