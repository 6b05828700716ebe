"""Rows of the directory's tables, both ways: the column lists, the values made from a row, and
the inserts the directory's parts share (a registration writes a tenant, a user and a key)."""

from __future__ import annotations

from typing import Any

import asyncpg

from tenant_gateway.exceptions import UserExists
from tenant_gateway.models import ApiKeyRecord, AuditEntry, Role, Tenant, TenantStatus, User
from tenant_gateway.postgres.database import Database

__all__ = [
    "KEY_COLUMNS",
    "TENANT_COLUMNS",
    "USER_COLUMNS",
    "audited_change",
    "insert_audit",
    "insert_key",
    "insert_user",
    "key_of",
    "tenant_of",
    "user_of",
]

TENANT_COLUMNS = "id, name, plan, status, max_users, admin_email, created_at"
KEY_COLUMNS = (
    "tenant_id, id, key_hash, prefix, name, role, created_at, expires_at, revoked_at, last_used_at"
)
USER_COLUMNS = "tenant_id, id, email, role, created_at"


def tenant_of(row: asyncpg.Record) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        plan=row["plan"],
        status=TenantStatus(row["status"]),
        max_users=row["max_users"],
        admin_email=row["admin_email"],
        created_at=row["created_at"],
    )


def user_of(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        tenant_id=row["tenant_id"],
        email=row["email"],
        role=Role(row["role"]),
        created_at=row["created_at"],
    )


def key_of(row: asyncpg.Record, prefix: str = "") -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row[prefix + "id"],
        tenant_id=row[prefix + "tenant_id"],
        key_hash=bytes(row[prefix + "key_hash"]),
        prefix=row[prefix + "prefix"],
        name=row[prefix + "name"],
        role=Role(row[prefix + "role"]),
        created_at=row[prefix + "created_at"],
        expires_at=row[prefix + "expires_at"],
        revoked_at=row[prefix + "revoked_at"],
        last_used_at=row[prefix + "last_used_at"],
    )


async def insert_user(conn: Any, user: User) -> None:
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
        raise UserExists(user.email) from exc


async def insert_key(conn: Any, key: ApiKeyRecord) -> None:
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


async def insert_audit(conn: Any, entry: AuditEntry | None) -> None:
    """Write ``entry`` in the caller's transaction (a gateway one: the owner role)."""
    if entry is not None:
        await conn.execute(
            "INSERT INTO tg_audit (tenant_id, at, actor, action, target, ip)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            entry.tenant_id,
            entry.at,
            entry.actor,
            entry.action,
            entry.target,
            entry.ip,
        )


async def audited_change(
    db: Database, audit: AuditEntry | None, sql: str, *args: object
) -> asyncpg.Record | None:
    """One change whose statement returns the row it changed, and ``audit`` in the same
    transaction when it changed one. None: nothing matched, nothing was written."""
    async with db.gateway_transaction() as conn:
        row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
        if row is not None:
            await insert_audit(conn, audit)
    return row
