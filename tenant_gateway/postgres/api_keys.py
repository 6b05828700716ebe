"""The tenant directory's API keys in PostgreSQL: lookup by digest, rotation under the key row's
lock, last use written in batches (one statement each)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from tenant_gateway.directory import LAST_USED_GRANULARITY, KeyUse
from tenant_gateway.models import ApiKeyRecord, AuditEntry, Tenant
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.rows import (
    KEY_COLUMNS,
    TENANT_COLUMNS,
    audited_change,
    insert_audit,
    insert_key,
    key_of,
    tenant_of,
)

__all__ = ["KeyRows"]


class KeyRows:
    """The directory's API keys (``PostgresDirectory`` is made of this and the other parts)."""

    _db: Database

    async def find_key(self, key_hash: bytes) -> tuple[ApiKeyRecord, Tenant] | None:
        return (await self.find_keys((key_hash,))).get(key_hash)

    async def find_keys(
        self, key_hashes: Collection[bytes]
    ) -> dict[bytes, tuple[ApiKeyRecord, Tenant]]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(_FIND_KEYS, list(key_hashes))
        found = {}
        for row in rows:
            key = key_of(row, "k_")
            found[key.key_hash] = (key, tenant_of(row))
        return found

    async def create_key(self, key: ApiKeyRecord, *, audit: AuditEntry | None = None) -> None:
        async with self._db.gateway_transaction() as conn:
            await insert_key(conn, key)
            await insert_audit(conn, audit)

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {KEY_COLUMNS} FROM tg_api_keys WHERE tenant_id = $1"
                " ORDER BY created_at, id",
                tenant_id,
            )
        return [key_of(row) for row in rows]

    async def revoke_key(
        self, tenant_id: str, key_id: str, at: datetime, *, audit: AuditEntry | None = None
    ) -> bool:
        revoked = await audited_change(
            self._db,
            audit,
            "UPDATE tg_api_keys SET revoked_at = LEAST(coalesce(revoked_at, $3), $3)"
            " WHERE tenant_id = $1 AND id = $2 RETURNING id",
            tenant_id,
            key_id,
            at,
        )
        return revoked is not None

    async def rotate_key(
        self,
        tenant_id: str,
        key_id: str,
        new_key: ApiKeyRecord,
        old_key_until: datetime,
        *,
        audit: AuditEntry | None = None,
    ) -> bool:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM tg_api_keys WHERE tenant_id = $1 AND id = $2"
                " FOR UPDATE",
                tenant_id,
                key_id,
            )
            if row is None or not key_of(row).usable_at(new_key.created_at.timestamp()):
                return False
            await conn.execute(  # an earlier end (a rotation in its grace) is kept
                "UPDATE tg_api_keys SET revoked_at = LEAST(coalesce(revoked_at, $3), $3)"
                " WHERE tenant_id = $1 AND id = $2",
                tenant_id,
                key_id,
                old_key_until,
            )
            await insert_key(conn, new_key)
            await insert_audit(conn, audit)
        return True

    async def touch_keys(self, used: KeyUse) -> None:
        if not used:
            return
        ids = list(used)
        async with self._db.gateway_transaction() as conn:
            await conn.execute(
                _TOUCH_KEYS,
                [tenant_id for tenant_id, _ in ids],
                [key_id for _, key_id in ids],
                [used[key] for key in ids],
                LAST_USED_GRANULARITY,
            )


_FIND_KEYS = (
    "SELECT "
    + ", ".join(f"k.{column} AS k_{column}" for column in KEY_COLUMNS.split(", "))
    + ", "
    + ", ".join(f"t.{column}" for column in TENANT_COLUMNS.split(", "))
    + " FROM tg_api_keys k JOIN tg_tenants t ON t.id = k.tenant_id"
    " WHERE k.key_hash = ANY($1::bytea[])"
)
"""Every key among the digests given, with its tenant: one query however many."""

# One statement for the whole batch. It updates only the rows whose stored last use is a
# granularity older (so a busy key costs a row version a minute, not a second), and locks them
# in key order first, so the batches of concurrent workers never deadlock on each other.
_TOUCH_KEYS = """
WITH due AS (
    SELECT k.tenant_id, k.id, u.used_at
    FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u (tenant_id, id, used_at)
    JOIN tg_api_keys k ON k.tenant_id = u.tenant_id AND k.id = u.id
    WHERE k.last_used_at IS NULL OR k.last_used_at <= u.used_at - $4::interval
    ORDER BY k.tenant_id, k.id
    FOR UPDATE OF k
)
UPDATE tg_api_keys k SET last_used_at = due.used_at
FROM due WHERE k.tenant_id = due.tenant_id AND k.id = due.id
"""
