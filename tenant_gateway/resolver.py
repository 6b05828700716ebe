"""API key → tenant, through a bounded in-process cache.

A warm key costs a dictionary lookup, no database query. Entries live ``ttl`` seconds
(default 1 s): that bounds how long a revocation, suspension or plan change made by another
worker process can go unseen. Changes made through this process's admin API evict at once.
Unknown keys are cached too (as misses), so a flood of well-formed fake keys cannot hammer
the database.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from tenant_gateway import problems
from tenant_gateway.clock import Clock
from tenant_gateway.directory import TenantDirectory
from tenant_gateway.keys import hash_api_key, is_well_formed, verify_api_key
from tenant_gateway.models import ApiKeyRecord, Tenant, TenantStatus

__all__ = ["KeyResolver", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a tenant key authenticates: the tenant and the key it used."""

    tenant: Tenant
    key: ApiKeyRecord


_Entry = tuple[float, Principal | None]  # (expires at, principal or a cached miss)


class KeyResolver:
    def __init__(
        self,
        directory: TenantDirectory,
        clock: Clock,
        *,
        ttl: float = 1.0,
        max_entries: int = 100_000,
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._ttl = ttl
        self._max_entries = max_entries
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._last_used: dict[tuple[str, str], float] = {}

    async def resolve(self, raw_key: str) -> Principal:
        """The principal for ``raw_key``, or a ``Problem`` (401 invalid key, 403 suspended)."""
        if not is_well_formed(raw_key):
            raise problems.invalid_api_key()
        now = self._clock()
        digest = hash_api_key(raw_key)
        entry = self._cache.get(digest)
        if entry is not None and entry[0] > now:
            principal = entry[1]
        else:
            principal = await self._load(digest)
            self._remember(digest, (now + self._ttl, principal))
        if principal is None or not verify_api_key(raw_key, principal.key.key_hash):
            raise problems.invalid_api_key()
        if not principal.key.usable_at(now) or principal.tenant.status is TenantStatus.DELETED:
            raise problems.invalid_api_key()
        if principal.tenant.status is TenantStatus.SUSPENDED:
            raise problems.tenant_suspended()
        self._last_used[(principal.tenant.id, principal.key.id)] = now
        return principal

    def drain_last_used(self) -> dict[tuple[str, str], datetime]:
        """Last-use times gathered since the previous drain, for one batched write."""
        used, self._last_used = self._last_used, {}
        return {ids: datetime.fromtimestamp(moment, UTC) for ids, moment in used.items()}

    def last_used(self, tenant_id: str, key_id: str) -> datetime | None:
        """A use this process has seen but not yet written, if any."""
        moment = self._last_used.get((tenant_id, key_id))
        return None if moment is None else datetime.fromtimestamp(moment, UTC)

    async def _load(self, digest: bytes) -> Principal | None:
        found = await self._directory.find_key(digest)
        return None if found is None else Principal(tenant=found[1], key=found[0])

    def _remember(self, digest: bytes, entry: _Entry) -> None:
        self._cache[digest] = entry
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def forget_all(self) -> None:
        self._cache.clear()

    def forget_tenant(self, tenant_id: str) -> None:
        """Evict every cached key of a tenant (after a change to the tenant or its keys)."""
        stale = [
            digest
            for digest, (_, principal) in self._cache.items()
            if principal is not None and principal.tenant.id == tenant_id
        ]
        for digest in stale:
            del self._cache[digest]

    def __len__(self) -> int:
        return len(self._cache)
