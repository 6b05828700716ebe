"""API key → tenant, through a bounded in-process cache.

A warm key costs one dictionary lookup: no database query, no hashing. (The cache is keyed by
the presented key itself; Python's string hashing is salted per process, so probing it for a
valid key is no easier than guessing one.) The stored SHA-256 digest is compared in constant
time when an entry is loaded.

How long an entry is trusted: every change made through the admin API evicts the tenant's
entries at once, in this process and (through ``propagation``) in every other. So an entry may
live long (``long_ttl``, default 60 s) while this process *knows* it has applied every change
published before a recent moment: ``confirm(moment)`` says so (the invalidation channel calls
it each time a heartbeat comes back through the subscription, behind every message published
before it). An entry is served until ``ttl`` (default 1 s) past the later of its load and the
latest confirmation, and never past ``long_ttl`` after its load. While confirmations keep
coming, that is ``long_ttl``; once they stop (the subscription is lost, or silent), every entry
— however long it was allowed before — expires at most ``ttl`` after the last confirmation,
that is, within ``ttl`` of the moment the outage began; entries loaded since live ``ttl``. A
process that never confirms (a PostgreSQL directory without Redis, shared with other processes)
keeps the short ``ttl``. Unknown keys are cached too (as misses, for ``ttl`` only), so a flood
of well-formed fake keys cannot hammer the database.

Loads are single-flight: the requests that find a key cold together share one load. The
loads of different keys asked for at about the same time share one directory query
(``lookups.py``): a restart with thousands of keys in use, or a minute of keys reaching the
end of their life together, costs a query per batch, not one per key. A key in use is
refreshed ahead: a use in the last quarter of ``ttl`` before its entry expires starts a
background reload, so a busy key never expires under its traffic (without it, every busy key
stalls all its concurrent requests on a query each time it expires). An entry is never served
past its expiry, so refreshing ahead does not stretch the revocation bound; a load that
overlaps an eviction (``forget_*``) is not cached.

Failed authentications that cost a lookup (unknown, revoked or expired keys, deleted tenants)
are counted per client address when a ``failures`` limiter is given. An address over its limit
gets 429 for any key this process has not seen valid, before any lookup; a key it has resolved
to a tenant before (its entry is kept, stale, until the LRU drops it) is still looked up, so the
other clients behind a shared address (NAT) keep working. The lookups of keys not seen valid
are bracketed by the limiter's ``begin``/``end``: at most a few per address at once, and never
more than its window has room for, so concurrent fake keys cost no more lookups than
sequential ones.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tenant_gateway.client_limits import ClientLimiter
from tenant_gateway.clock import Clock
from tenant_gateway.directory import LAST_USED_GRANULARITY, TenantDirectory
from tenant_gateway.exceptions import (
    InvalidApiKey,
    StoreUnavailable,
    TenantSuspended,
    TooManyAttempts,
)
from tenant_gateway.flights import Flights
from tenant_gateway.keys import hash_api_key, is_well_formed, verify_api_key
from tenant_gateway.lookups import KeyLookups
from tenant_gateway.models import ApiKeyRecord, Role, Tenant, TenantStatus

__all__ = ["KeyResolver", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a tenant key authenticates: the tenant and the key it used."""

    tenant: Tenant
    key: ApiKeyRecord
    may_call_api: bool = True
    """Whether the key's role may call the wrapped API, decided once when the key loads."""
    ids: tuple[str, str] = field(init=False)
    """(tenant id, key id): where this key's last use is noted."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", (self.tenant.id, self.key.id))


_GRANULARITY = LAST_USED_GRANULARITY.total_seconds()

REFRESH_AHEAD = 0.25
"""Share of the short TTL, before an entry expires, in which a use starts a background reload."""

# (loaded at, never served past, principal or a cached miss, the key usable until)
_Entry = tuple[float, float, Principal | None, float]


def _fails(entry: _Entry, now: float) -> bool:
    """Whether ``_admit`` refuses the entry as an invalid key (what the failure limit counts)."""
    principal = entry[2]
    return principal is None or now >= entry[3] or principal.tenant.status is TenantStatus.DELETED


def _usable_until(key: ApiKeyRecord) -> float:
    ends = [moment.timestamp() for moment in (key.expires_at, key.revoked_at) if moment]
    return min(ends) if ends else math.inf


class KeyResolver:
    def __init__(
        self,
        directory: TenantDirectory,
        clock: Clock,
        *,
        ttl: float = 1.0,
        long_ttl: float = 60.0,
        max_entries: int = 100_000,
        api_roles: frozenset[Role] = frozenset(Role),
        failures: ClientLimiter | None = None,
    ) -> None:
        self._failures = failures
        self._clock = clock
        self._ttl = ttl
        self._long_ttl = max(ttl, long_ttl)
        self._confirmed_at = -math.inf
        """The latest moment by which every published change is known applied here."""
        self._max_entries = max_entries
        self._api_roles = api_roles
        self._refresh_window = ttl * REFRESH_AHEAD
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._last_used: dict[tuple[str, str], float] = {}
        self._next_use: dict[tuple[str, str], float] = {}
        """Per key, when a use is next worth writing: ``LAST_USED_GRANULARITY`` after the
        last one drained (a use sooner would not rewrite the row). Past entries are pruned."""
        self._next_use_pruned = -math.inf
        self._loads: Flights[str, _Entry] = Flights("loading a key")
        self._lookups = KeyLookups(directory)
        self._generation = 0
        """Bumped by every eviction: a load that started before one is not cached."""
        self.hits = 0
        """Keys answered from a fresh cache entry (read by ``/metrics``)."""
        self.misses = 0
        """Keys that needed a directory lookup (a cold or expired entry)."""

    def cached(self, raw_key: str) -> Principal | None:
        """The principal for a warm key, without I/O (and without a coroutine: this is the
        hot path); None when the key must be loaded first. Refusals raise, as in ``resolve``."""
        now = self._clock()
        entry = self._cache.get(raw_key)
        if entry is None:
            return None
        # _expires, inlined: this runs on every request
        loaded, confirmed = entry[0], self._confirmed_at
        expires = (loaded if loaded > confirmed else confirmed) + self._ttl
        if expires > entry[1]:
            expires = entry[1]
        if expires <= now:
            return None
        self.hits += 1
        if expires - now < self._refresh_window and raw_key not in self._loads:
            self._loads.start(raw_key, lambda: self._load(raw_key, now))
        return self._admit(entry, now)

    def _expires(self, entry: _Entry) -> float:
        """When ``entry`` stops being served: ``ttl`` after its load or the latest confirmation,
        whichever is later, and never later than its longest life."""
        return min(max(entry[0], self._confirmed_at) + self._ttl, entry[1])

    def confirm(self, moment: float) -> None:
        """Every change published before ``moment`` (this clock's time) has been applied here:
        entries loaded earlier stay trusted ``ttl`` past it, up to their longest life."""
        if moment > self._confirmed_at:
            self._confirmed_at = moment

    @property
    def confirmed_at(self) -> float:
        return self._confirmed_at

    async def resolve(self, raw_key: str, client: str = "") -> Principal:
        """The principal for ``raw_key``, or a ``Refusal`` (401 invalid key, 403 suspended,
        429 when ``client``, an address from ``client_address``, has failed too often)."""
        now = self._clock()
        entry = self._cache.get(raw_key)
        if entry is None or self._expires(entry) <= now:
            if not is_well_formed(raw_key):
                raise InvalidApiKey()
            failures = self._failures
            # A key never seen valid may fail: its lookup waits for room in the address's
            # window, so concurrent ones cannot all pass before the first failures count.
            gate = failures if entry is None or entry[2] is None else None
            if gate is not None:
                wait = await gate.begin(client)
                if wait:
                    raise TooManyAttempts("failed authentications", wait)
            self.misses += 1
            try:
                entry = await self._lookup(raw_key, entry, now)
                if failures is not None and _fails(entry, now):
                    wait = await failures.hit(client)
                    if wait:
                        raise TooManyAttempts("failed authentications", wait)
            finally:
                if gate is not None:
                    gate.end(client)
        else:
            self.hits += 1
        return self._admit(entry, now)

    async def _lookup(self, raw_key: str, entry: _Entry | None, now: float) -> _Entry:
        generation = self._generation
        try:
            return await self._loads.join(raw_key, lambda: self._load(raw_key, now))
        except StoreUnavailable:
            # Never seen, or evicted meanwhile (the entry may be a revoked key's): nothing
            # safe to fall back on (503).
            if entry is None or generation != self._generation:
                raise
            # The directory is down: keep serving what we knew, and try again next (short) TTL.
            entry = (now, now + self._ttl, entry[2], entry[3])
            self._cache[raw_key] = entry
            return entry

    def _admit(self, entry: _Entry, now: float) -> Principal:
        principal = entry[2]
        if principal is None or now >= entry[3]:
            raise InvalidApiKey()
        status = principal.tenant.status
        if status is not TenantStatus.ACTIVE:
            if status is TenantStatus.SUSPENDED:
                raise TenantSuspended()
            raise InvalidApiKey()  # deleted
        ids = principal.ids
        if now >= self._next_use.get(ids, 0.0):
            self._last_used[ids] = now
        return principal

    def drain_last_used(self) -> dict[tuple[str, str], datetime]:
        """Last-use times gathered since the previous drain, for one batched write: of each
        key, its latest use, if it came ``LAST_USED_GRANULARITY`` or more after the last one
        drained (the store rewrites a row only for a use that much newer than the stored one,
        so the uses sooner are not even noted). A busy key is sent once a minute, not once a
        flush, and a flush costs the keys it sends, not the keys in use."""
        used, self._last_used = self._last_used, {}
        next_use, granularity = self._next_use, _GRANULARITY
        for ids, moment in used.items():
            next_use[ids] = moment + granularity
        now = self._clock()
        if now - self._next_use_pruned >= granularity:  # forget what holds no use back
            self._next_use_pruned = now
            self._next_use = {ids: at for ids, at in next_use.items() if at > now}
        return {ids: datetime.fromtimestamp(moment, UTC) for ids, moment in used.items()}

    def keep_last_used(self, used: dict[tuple[str, str], datetime]) -> None:
        """Put back a drained batch whose write failed (newer uses win)."""
        for ids, moment in used.items():
            self._next_use.pop(ids, None)
            self._last_used[ids] = max(self._last_used.get(ids, 0.0), moment.timestamp())

    def last_used(self, tenant_id: str, key_id: str) -> datetime | None:
        """A use this process has noted but not yet written, if any (a use within a minute of
        the last one drained is not noted)."""
        moment = self._last_used.get((tenant_id, key_id))
        return None if moment is None else datetime.fromtimestamp(moment, UTC)

    async def _load(self, raw_key: str, now: float) -> _Entry:
        generation = self._generation
        found = await self._lookups.find(hash_api_key(raw_key))
        entry: _Entry
        if found is None or not verify_api_key(raw_key, found[0].key_hash):
            # a miss: no eviction names it, so only the short TTL bounds it
            entry = (now, now + self._ttl, None, 0.0)
        else:
            entry = (
                now,
                now + self._long_ttl,
                Principal(found[1], found[0], found[0].role in self._api_roles),
                _usable_until(found[0]),
            )
        if generation != self._generation:
            return entry  # evicted meanwhile: answer the callers who asked, cache nothing
        self._cache[raw_key] = entry
        self._cache.move_to_end(raw_key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return entry

    def forget_all(self) -> None:
        self._evicting()
        self._cache.clear()

    def _evicting(self) -> None:
        """Loads in flight may have read what is being changed: new callers start afresh."""
        self._generation += 1
        self._loads.forget()

    def forget_tenant(self, tenant_id: str) -> None:
        """Evict every cached key of a tenant (after a change to the tenant or its keys)."""
        self._evicting()
        stale = [
            raw_key
            for raw_key, (_, _, principal, _) in self._cache.items()
            if principal is not None and principal.tenant.id == tenant_id
        ]
        for raw_key in stale:
            del self._cache[raw_key]

    def __len__(self) -> int:
        return len(self._cache)
