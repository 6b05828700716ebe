"""The tenant directory: tenants, users and key records.

``TenantDirectory`` is the Protocol; ``MemoryDirectory`` is the embedded default and
``tenant_gateway.postgres.PostgresDirectory`` the durable one. Both pass the same tests.
Rules that need atomicity (seat limits, plan downgrades) live here, inside the store,
so they hold under concurrent requests and across workers.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Protocol

from tenant_gateway import problems
from tenant_gateway.models import (
    ApiKeyRecord,
    Tenant,
    TenantStatus,
    User,
    effective_seat_limit,
)
from tenant_gateway.plans import Plan

__all__ = ["MemoryDirectory", "TenantDirectory"]


class TenantDirectory(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def register(self, tenant: Tenant, admin: User, key: ApiKeyRecord) -> None:
        """Create the tenant, its admin user and its first key, all or nothing."""

    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def list_tenants(self, *, limit: int, after: str | None) -> list[Tenant]:
        """Tenants ordered by id, ``limit`` of them, starting after the id ``after``."""

    async def find_key(self, key_hash: bytes) -> tuple[ApiKeyRecord, Tenant] | None: ...

    async def add_user(self, user: User, seat_limit: int | None) -> None:
        """Insert unless the seat limit is reached (403) or the email exists (409)."""

    async def list_users(self, tenant_id: str) -> list[User]: ...

    async def count_users(self, tenant_id: str) -> int: ...

    async def change_plan(self, tenant_id: str, plan: Plan, at: datetime) -> Tenant | None:
        """Switch plan, refusing (409) when the tenant has more users than it allows."""

    async def set_status(self, tenant_id: str, status: TenantStatus) -> Tenant | None: ...


class MemoryDirectory:
    """In-process directory. Every method runs without awaiting, so each is atomic."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._users: dict[str, dict[str, User]] = {}
        self._keys: dict[bytes, ApiKeyRecord] = {}
        self.plan_changes: list[tuple[str, str, str, datetime]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def register(self, tenant: Tenant, admin: User, key: ApiKeyRecord) -> None:
        self._tenants[tenant.id] = tenant
        self._users[tenant.id] = {admin.id: admin}
        self._keys[key.key_hash] = key

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        tenant = self._tenants.get(tenant_id)
        return None if tenant is None or tenant.status is TenantStatus.DELETED else tenant

    async def list_tenants(self, *, limit: int, after: str | None) -> list[Tenant]:
        ids = sorted(
            tenant_id
            for tenant_id, tenant in self._tenants.items()
            if tenant.status is not TenantStatus.DELETED and (after is None or tenant_id > after)
        )
        return [self._tenants[tenant_id] for tenant_id in ids[:limit]]

    async def find_key(self, key_hash: bytes) -> tuple[ApiKeyRecord, Tenant] | None:
        record = self._keys.get(key_hash)
        if record is None:
            return None
        return record, self._tenants[record.tenant_id]

    async def add_user(self, user: User, seat_limit: int | None) -> None:
        users = self._users[user.tenant_id]
        if any(existing.email.lower() == user.email.lower() for existing in users.values()):
            raise problems.user_exists(user.email)
        if seat_limit is not None and len(users) >= seat_limit:
            raise problems.user_limit_reached(seat_limit)
        users[user.id] = user

    async def list_users(self, tenant_id: str) -> list[User]:
        return sorted(self._users.get(tenant_id, {}).values(), key=lambda u: u.created_at)

    async def count_users(self, tenant_id: str) -> int:
        return len(self._users.get(tenant_id, {}))

    async def change_plan(self, tenant_id: str, plan: Plan, at: datetime) -> Tenant | None:
        tenant = await self.get_tenant(tenant_id)
        if tenant is None:
            return None
        users = len(self._users[tenant_id])
        limit = effective_seat_limit(plan, tenant)
        if limit is not None and users > limit:
            raise problems.too_many_users(users, limit)
        updated = dataclasses.replace(tenant, plan=plan.name)
        self._tenants[tenant_id] = updated
        self.plan_changes.append((tenant_id, tenant.plan, plan.name, at))
        return updated

    async def set_status(self, tenant_id: str, status: TenantStatus) -> Tenant | None:
        tenant = await self.get_tenant(tenant_id)
        if tenant is None:
            return None
        updated = dataclasses.replace(tenant, status=status)
        self._tenants[tenant_id] = updated
        return updated
