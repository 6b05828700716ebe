"""The tenant directory in PostgreSQL (the gateway's own tables, ``tg_*``).

Seat limits and downgrades lock the tenant row (``FOR UPDATE``) before counting users, so
concurrent additions across workers cannot exceed the limit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from tenant_gateway import problems
from tenant_gateway.models import (
    ApiKeyRecord,
    Role,
    Tenant,
    TenantStatus,
    User,
    effective_seat_limit,
)
from tenant_gateway.plans import Plan
from tenant_gateway.postgres.database import Database

__all__ = ["PostgresDirectory"]

_TENANT_COLUMNS = "id, name, plan, status, max_users, admin_email, created_at"


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        plan=row["plan"],
        status=TenantStatus(row["status"]),
        max_users=row["max_users"],
        admin_email=row["admin_email"],
        created_at=row["created_at"],
    )


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        tenant_id=row["tenant_id"],
        email=row["email"],
        role=Role(row["role"]),
        created_at=row["created_at"],
    )


class PostgresDirectory:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def start(self) -> None:
        await self._db.connect()

    async def close(self) -> None:
        await self._db.close()

    async def register(self, tenant: Tenant, admin: User, key: ApiKeyRecord) -> None:
        async with self._db.gateway_transaction() as conn:
            await conn.execute(
                "INSERT INTO tg_tenants (id, name, plan, status, max_users, admin_email,"
                " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                tenant.id,
                tenant.name,
                tenant.plan,
                tenant.status.value,
                tenant.max_users,
                tenant.admin_email,
                tenant.created_at,
            )
            await conn.execute(
                "INSERT INTO tg_plan_changes (tenant_id, from_plan, to_plan, changed_at)"
                " VALUES ($1, NULL, $2, $3)",
                tenant.id,
                tenant.plan,
                tenant.created_at,
            )
            await self._insert_user(conn, admin)
            await conn.execute(
                "INSERT INTO tg_api_keys (tenant_id, id, key_hash, prefix, name, role,"
                " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                key.tenant_id,
                key.id,
                key.key_hash,
                key.prefix,
                key.name,
                key.role.value,
                key.created_at,
                key.expires_at,
            )

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_TENANT_COLUMNS} FROM tg_tenants WHERE id = $1 AND status <> 'deleted'",
                tenant_id,
            )
        return None if row is None else _tenant(row)

    async def list_tenants(self, *, limit: int, after: str | None) -> list[Tenant]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {_TENANT_COLUMNS} FROM tg_tenants WHERE status <> 'deleted'"
                " AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $1",
                limit,
                after,
            )
        return [_tenant(row) for row in rows]

    async def find_key(self, key_hash: bytes) -> tuple[ApiKeyRecord, Tenant] | None:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                "SELECT k.id AS key_id, k.key_hash, k.prefix, k.name AS key_name, k.role,"
                " k.created_at AS key_created_at, k.expires_at, k.revoked_at,"
                f" {', '.join('t.' + c for c in _TENANT_COLUMNS.split(', '))}"
                " FROM tg_api_keys k JOIN tg_tenants t ON t.id = k.tenant_id"
                " WHERE k.key_hash = $1",
                key_hash,
            )
        if row is None:
            return None
        record = ApiKeyRecord(
            id=row["key_id"],
            tenant_id=row["id"],
            key_hash=bytes(row["key_hash"]),
            prefix=row["prefix"],
            name=row["key_name"],
            role=Role(row["role"]),
            created_at=row["key_created_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
        )
        return record, _tenant(row)

    @staticmethod
    async def _insert_user(conn: Any, user: User) -> None:
        try:
            await conn.execute(
                "INSERT INTO tg_users (tenant_id, id, email, role, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                user.tenant_id,
                user.id,
                user.email,
                user.role.value,
                user.created_at,
            )
        except asyncpg.UniqueViolationError as exc:
            raise problems.user_exists(user.email) from exc

    async def add_user(self, user: User, seat_limit: int | None) -> None:
        async with self._db.gateway_transaction() as conn:
            await conn.execute("SELECT 1 FROM tg_tenants WHERE id = $1 FOR UPDATE", user.tenant_id)
            duplicate = await conn.fetchval(
                "SELECT 1 FROM tg_users WHERE tenant_id = $1 AND lower(email) = lower($2)",
                user.tenant_id,
                user.email,
            )
            if duplicate:
                raise problems.user_exists(user.email)
            if seat_limit is not None:
                users = await conn.fetchval(
                    "SELECT count(*) FROM tg_users WHERE tenant_id = $1", user.tenant_id
                )
                if users >= seat_limit:
                    raise problems.user_limit_reached(seat_limit)
            await self._insert_user(conn, user)

    async def list_users(self, tenant_id: str) -> list[User]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, id, email, role, created_at FROM tg_users"
                " WHERE tenant_id = $1 ORDER BY created_at, id",
                tenant_id,
            )
        return [_user(row) for row in rows]

    async def count_users(self, tenant_id: str) -> int:
        async with self._db.gateway_transaction() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM tg_users WHERE tenant_id = $1", tenant_id
            )
        return count

    async def change_plan(self, tenant_id: str, plan: Plan, at: datetime) -> Tenant | None:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_TENANT_COLUMNS} FROM tg_tenants"
                " WHERE id = $1 AND status <> 'deleted' FOR UPDATE",
                tenant_id,
            )
            if row is None:
                return None
            tenant = _tenant(row)
            limit = effective_seat_limit(plan, tenant)
            if limit is not None:
                users = await conn.fetchval(
                    "SELECT count(*) FROM tg_users WHERE tenant_id = $1", tenant_id
                )
                if users > limit:
                    raise problems.too_many_users(users, limit)
            if tenant.plan == plan.name:
                return tenant
            row = await conn.fetchrow(
                f"UPDATE tg_tenants SET plan = $2, updated_at = $3 WHERE id = $1"
                f" RETURNING {_TENANT_COLUMNS}",
                tenant_id,
                plan.name,
                at,
            )
            if row is None:  # cannot happen: the row is locked FOR UPDATE above
                return None
            await conn.execute(
                "INSERT INTO tg_plan_changes (tenant_id, from_plan, to_plan, changed_at)"
                " VALUES ($1, $2, $3, $4)",
                tenant_id,
                tenant.plan,
                plan.name,
                at,
            )
        return _tenant(row)

    async def set_status(self, tenant_id: str, status: TenantStatus) -> Tenant | None:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                f"UPDATE tg_tenants SET status = $2, updated_at = now()"
                f" WHERE id = $1 AND status <> 'deleted' RETURNING {_TENANT_COLUMNS}",
                tenant_id,
                status.value,
            )
        return None if row is None else _tenant(row)
