"""The tenant directory: tenants, users, key records and the audit trail.

``TenantDirectory`` is the Protocol; ``MemoryDirectory`` is the embedded default and
``tenant_gateway.postgres.PostgresDirectory`` the durable one. Both pass the same tests.
Rules that need atomicity (seat limits, plan downgrades, rotation) live here, inside the
store, so they hold under concurrent requests and across workers.

Every mutating method takes the ``AuditEntry`` that records it (``audit=``) and writes it in
the same step as the change (Postgres: the same transaction): a change is never left without
its entry, nor an entry without its change.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from tenant_gateway.exceptions import SeatLimitReached, TooManyUsers, UserExists
from tenant_gateway.models import (
    ApiKeyRecord,
    AuditEntry,
    PlanChange,
    Role,
    Tenant,
    TenantStatus,
    User,
    effective_seat_limit,
)
from tenant_gateway.plans import Plan

__all__ = [
    "LAST_USED_GRANULARITY",
    "KeyUse",
    "MemoryDirectory",
    "TenantChanges",
    "TenantDirectory",
]

KeyUse = Mapping[tuple[str, str], datetime]
"""(tenant id, key id) → when the key was last used."""

LAST_USED_GRANULARITY = timedelta(seconds=60)
"""A key's ``last_used_at`` is rewritten only once the stored value is this much older than a
use. It is there to tell a key in use from one forgotten (days, months), which a minute does
not blur; finer, it would cost a row update per busy key every flush — in PostgreSQL a dead row
each, whatever the number of keys."""


@dataclasses.dataclass(frozen=True, slots=True)
class TenantChanges:
    """A PATCH of a tenant; ``None`` leaves a field alone, ``clear_max_users`` unsets the cap."""

    name: str | None = None
    admin_email: str | None = None
    max_users: int | None = None
    clear_max_users: bool = False


class TenantDirectory(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    # tenants
    async def register(
        self, tenant: Tenant, admin: User, key: ApiKeyRecord, *, audit: AuditEntry | None = None
    ) -> None:
        """Create the tenant, its admin user and its first key, all or nothing."""

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant unless it does not exist or was deleted."""

    async def list_tenants(self, *, limit: int, after: str | None) -> list[Tenant]:
        """Live tenants ordered by id, ``limit`` of them, starting after the id ``after``."""

    async def tenants_on_other_plans(
        self, plans: Collection[str], *, limit: int
    ) -> tuple[list[tuple[str, str]], int]:
        """Live tenants whose plan is not in ``plans``: (tenant id, plan) of the first ``limit``
        by id, and how many there are in all."""

    async def update_tenant(
        self,
        tenant_id: str,
        changes: TenantChanges,
        plan: Plan,
        at: datetime,
        *,
        audit: AuditEntry | None = None,
    ) -> Tenant | None:
        """Apply ``changes``; a seat cap below the current user count is refused (409)."""

    async def change_plan(
        self,
        tenant_id: str,
        plan: Plan,
        at: datetime,
        *,
        calls_before: int,
        audit: AuditEntry | None = None,
    ) -> Tenant | None:
        """Switch plan, refusing (409) when the tenant has more users than it allows.
        ``calls_before``, the period's billable calls made so far, is stored with the change
        (the same step) for the invoice to split the month's calls at; a change to the plan
        the tenant has already stores nothing but its audit entry."""

    async def set_status(
        self, tenant_id: str, status: TenantStatus, *, audit: AuditEntry | None = None
    ) -> Tenant | None: ...

    async def plan_history(self, tenant_id: str) -> list[PlanChange]:
        """Every plan the tenant has had, with when it took effect and the calls stored with
        the change, oldest first (the first is the registration's)."""

    async def delete_tenant(
        self, tenant_id: str, at: datetime, *, audit: AuditEntry | None = None
    ) -> bool:
        """Tombstone the tenant and purge its users, keys and application rows."""

    # users
    async def add_user(
        self, user: User, seat_limit: int | None, *, audit: AuditEntry | None = None
    ) -> None:
        """Insert unless the seat limit is reached (403) or the email exists (409)."""

    async def list_users(self, tenant_id: str) -> list[User]: ...

    async def get_user(self, tenant_id: str, user_id: str) -> User | None: ...

    async def update_user(
        self, tenant_id: str, user_id: str, role: Role, *, audit: AuditEntry | None = None
    ) -> User | None: ...

    async def delete_user(
        self, tenant_id: str, user_id: str, *, audit: AuditEntry | None = None
    ) -> bool: ...

    async def count_users(self, tenant_id: str) -> int: ...

    # keys
    async def find_key(self, key_hash: bytes) -> tuple[ApiKeyRecord, Tenant] | None: ...

    async def find_keys(
        self, key_hashes: Collection[bytes]
    ) -> dict[bytes, tuple[ApiKeyRecord, Tenant]]:
        """The keys among these digests that exist, by digest, with their tenants: one query."""

    async def create_key(self, key: ApiKeyRecord, *, audit: AuditEntry | None = None) -> None: ...

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]: ...

    async def revoke_key(
        self, tenant_id: str, key_id: str, at: datetime, *, audit: AuditEntry | None = None
    ) -> bool:
        """Revoke at ``at`` (or keep an earlier revocation); False for an unknown key."""

    async def rotate_key(
        self,
        tenant_id: str,
        key_id: str,
        new_key: ApiKeyRecord,
        old_key_until: datetime,
        *,
        audit: AuditEntry | None = None,
    ) -> bool:
        """Insert ``new_key`` and end the old one at ``old_key_until``, or keep an earlier end
        (a second rotation during the grace never prolongs the old key), atomically.
        False when the old key is unknown or no longer usable at ``new_key.created_at``."""

    async def touch_keys(self, used: KeyUse) -> None:
        """Record last use times in one batch (never one write per request), each only where
        the stored one is ``LAST_USED_GRANULARITY`` or more older."""

    # webhooks
    async def set_webhook(
        self,
        tenant_id: str,
        url: str | None,
        secret: str | None,
        *,
        audit: AuditEntry | None = None,
    ) -> bool:
        """Set (or with ``None`` remove) the tenant's webhook; False for an unknown tenant."""

    async def webhook_target(self, tenant_id: str) -> tuple[str, str] | None:
        """(url, signing secret) of a live tenant's webhook, if it has one."""

    # console sessions
    async def end_session(self, nonce: str, expires_at: datetime, now: datetime) -> None:
        """Refuse the console session ``nonce`` from now on, in every process, until
        ``expires_at`` (when it would have ended anyway; records past theirs are dropped)."""

    async def session_ended(self, nonce: str) -> bool:
        """Whether the console session ``nonce`` was signed out of."""

    # audit
    async def record_audit(self, entry: AuditEntry) -> None:
        """An entry that records no change of this directory (an export, say)."""

    async def list_audit(
        self, tenant_id: str, *, limit: int, before: int | None
    ) -> list[AuditEntry]:
        """Newest first, ``limit`` entries with ids below ``before``."""


class MemoryDirectory:
    """In-process directory. No method awaits between its reads and writes, so each is atomic."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._users: dict[str, dict[str, User]] = {}
        self._keys: dict[bytes, ApiKeyRecord] = {}
        self._audit: dict[str, list[AuditEntry]] = {}
        self._audit_ids = itertools.count(1)
        self._webhooks: dict[str, tuple[str, str]] = {}
        self._ended_sessions: dict[str, datetime] = {}
        self.plan_changes: list[tuple[str, str | None, PlanChange]] = []
        """(tenant id, the plan before or None at registration, the change)."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _live(self, tenant_id: str) -> Tenant | None:
        tenant = self._tenants.get(tenant_id)
        return None if tenant is None or tenant.status is TenantStatus.DELETED else tenant

    async def register(
        self, tenant: Tenant, admin: User, key: ApiKeyRecord, *, audit: AuditEntry | None = None
    ) -> None:
        self._tenants[tenant.id] = tenant
        self._users[tenant.id] = {admin.id: admin}
        self._keys[key.key_hash] = key
        self.plan_changes.append((tenant.id, None, PlanChange(tenant.plan, tenant.created_at)))
        self._record(audit)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._live(tenant_id)

    async def list_tenants(self, *, limit: int, after: str | None) -> list[Tenant]:
        ids = sorted(
            tenant_id
            for tenant_id in self._tenants
            if self._live(tenant_id) and (after is None or tenant_id > after)
        )
        return [self._tenants[tenant_id] for tenant_id in ids[:limit]]

    async def tenants_on_other_plans(
        self, plans: Collection[str], *, limit: int
    ) -> tuple[list[tuple[str, str]], int]:
        found = sorted((t.id, t.plan) for t in self._tenants.values() if t.plan not in plans)
        live = [pair for pair in found if self._live(pair[0])]
        return live[:limit], len(live)

    def _check_seats(self, tenant: Tenant, plan: Plan) -> None:
        users = len(self._users[tenant.id])
        limit = effective_seat_limit(plan, tenant)
        if limit is not None and users > limit:
            raise TooManyUsers(users, limit)

    async def update_tenant(
        self,
        tenant_id: str,
        changes: TenantChanges,
        plan: Plan,
        at: datetime,
        *,
        audit: AuditEntry | None = None,
    ) -> Tenant | None:
        tenant = self._live(tenant_id)
        if tenant is None:
            return None
        updated = _apply(tenant, changes)
        self._check_seats(updated, plan)
        self._tenants[tenant_id] = updated
        self._record(audit)
        return updated

    async def change_plan(
        self,
        tenant_id: str,
        plan: Plan,
        at: datetime,
        *,
        calls_before: int,
        audit: AuditEntry | None = None,
    ) -> Tenant | None:
        tenant = self._live(tenant_id)
        if tenant is None:
            return None
        self._check_seats(tenant, plan)
        self._record(audit)
        if tenant.plan == plan.name:
            return tenant
        updated = dataclasses.replace(tenant, plan=plan.name)
        self._tenants[tenant_id] = updated
        self.plan_changes.append((tenant_id, tenant.plan, PlanChange(plan.name, at, calls_before)))
        return updated

    async def set_status(
        self, tenant_id: str, status: TenantStatus, *, audit: AuditEntry | None = None
    ) -> Tenant | None:
        tenant = self._live(tenant_id)
        if tenant is None:
            return None
        updated = dataclasses.replace(tenant, status=status)
        self._tenants[tenant_id] = updated
        self._record(audit)
        return updated

    async def plan_history(self, tenant_id: str) -> list[PlanChange]:
        return [change for tid, _, change in self.plan_changes if tid == tenant_id]

    async def delete_tenant(
        self, tenant_id: str, at: datetime, *, audit: AuditEntry | None = None
    ) -> bool:
        if await self.set_status(tenant_id, TenantStatus.DELETED, audit=audit) is None:
            return False
        self._users[tenant_id] = {}
        self._keys = {h: k for h, k in self._keys.items() if k.tenant_id != tenant_id}
        return True

    async def add_user(
        self, user: User, seat_limit: int | None, *, audit: AuditEntry | None = None
    ) -> None:
        users = self._users[user.tenant_id]
        if any(existing.email.lower() == user.email.lower() for existing in users.values()):
            raise UserExists(user.email)
        if seat_limit is not None and len(users) >= seat_limit:
            raise SeatLimitReached(seat_limit)
        users[user.id] = user
        self._record(audit)

    async def list_users(self, tenant_id: str) -> list[User]:
        return sorted(self._users.get(tenant_id, {}).values(), key=lambda u: u.created_at)

    async def get_user(self, tenant_id: str, user_id: str) -> User | None:
        return self._users.get(tenant_id, {}).get(user_id)

    async def update_user(
        self, tenant_id: str, user_id: str, role: Role, *, audit: AuditEntry | None = None
    ) -> User | None:
        user = self._users.get(tenant_id, {}).get(user_id)
        if user is None:
            return None
        updated = self._users[tenant_id][user_id] = dataclasses.replace(user, role=role)
        self._record(audit)
        return updated

    async def delete_user(
        self, tenant_id: str, user_id: str, *, audit: AuditEntry | None = None
    ) -> bool:
        if self._users.get(tenant_id, {}).pop(user_id, None) is None:
            return False
        self._record(audit)
        return True

    async def count_users(self, tenant_id: str) -> int:
        return len(self._users.get(tenant_id, {}))

    async def find_key(self, key_hash: bytes) -> tuple[ApiKeyRecord, Tenant] | None:
        record = self._keys.get(key_hash)
        if record is None:
            return None
        return record, self._tenants[record.tenant_id]

    async def find_keys(
        self, key_hashes: Collection[bytes]
    ) -> dict[bytes, tuple[ApiKeyRecord, Tenant]]:
        found = {}
        for key_hash in key_hashes:
            key = await self.find_key(key_hash)
            if key is not None:
                found[key_hash] = key
        return found

    async def create_key(self, key: ApiKeyRecord, *, audit: AuditEntry | None = None) -> None:
        self._keys[key.key_hash] = key
        self._record(audit)

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        keys = [k for k in self._keys.values() if k.tenant_id == tenant_id]
        return sorted(keys, key=lambda k: k.created_at)

    def _key(self, tenant_id: str, key_id: str) -> ApiKeyRecord | None:
        for record in self._keys.values():
            if record.tenant_id == tenant_id and record.id == key_id:
                return record
        return None

    async def revoke_key(
        self, tenant_id: str, key_id: str, at: datetime, *, audit: AuditEntry | None = None
    ) -> bool:
        record = self._key(tenant_id, key_id)
        if record is None:
            return False
        if record.revoked_at is None or record.revoked_at > at:  # never later than before
            self._keys[record.key_hash] = dataclasses.replace(record, revoked_at=at)
        self._record(audit)
        return True

    async def rotate_key(
        self,
        tenant_id: str,
        key_id: str,
        new_key: ApiKeyRecord,
        old_key_until: datetime,
        *,
        audit: AuditEntry | None = None,
    ) -> bool:
        record = self._key(tenant_id, key_id)
        if record is None or not record.usable_at(new_key.created_at.timestamp()):
            return False
        await self.revoke_key(tenant_id, key_id, old_key_until, audit=audit)
        self._keys[new_key.key_hash] = new_key
        return True

    async def touch_keys(self, used: KeyUse) -> None:
        by_id = {(k.tenant_id, k.id): h for h, k in self._keys.items()}
        for ids, moment in used.items():
            digest = by_id.get(ids)
            if digest is not None:
                record = self._keys[digest]
                stored = record.last_used_at
                if stored is None or stored <= moment - LAST_USED_GRANULARITY:
                    self._keys[digest] = dataclasses.replace(record, last_used_at=moment)

    async def set_webhook(
        self,
        tenant_id: str,
        url: str | None,
        secret: str | None,
        *,
        audit: AuditEntry | None = None,
    ) -> bool:
        if self._live(tenant_id) is None:
            return False
        if url is None or secret is None:
            self._webhooks.pop(tenant_id, None)
        else:
            self._webhooks[tenant_id] = (url, secret)
        self._record(audit)
        return True

    async def webhook_target(self, tenant_id: str) -> tuple[str, str] | None:
        return self._webhooks.get(tenant_id) if self._live(tenant_id) else None

    async def end_session(self, nonce: str, expires_at: datetime, now: datetime) -> None:
        ended = self._ended_sessions
        for stale in [n for n, until in ended.items() if until <= now]:
            del ended[stale]
        ended[nonce] = expires_at

    async def session_ended(self, nonce: str) -> bool:
        return nonce in self._ended_sessions

    def _record(self, entry: AuditEntry | None) -> None:
        """Called in the same step as the change it records (no await between them)."""
        if entry is not None:
            stored = dataclasses.replace(entry, id=next(self._audit_ids))
            self._audit.setdefault(entry.tenant_id, []).append(stored)

    async def record_audit(self, entry: AuditEntry) -> None:
        self._record(entry)

    async def list_audit(
        self, tenant_id: str, *, limit: int, before: int | None
    ) -> list[AuditEntry]:
        entries = [
            e for e in reversed(self._audit.get(tenant_id, [])) if before is None or e.id < before
        ]
        return entries[:limit]


def _apply(tenant: Tenant, changes: TenantChanges) -> Tenant:
    return dataclasses.replace(
        tenant,
        name=changes.name if changes.name is not None else tenant.name,
        admin_email=changes.admin_email if changes.admin_email is not None else tenant.admin_email,
        max_users=None
        if changes.clear_max_users
        else (changes.max_users if changes.max_users is not None else tenant.max_users),
    )
