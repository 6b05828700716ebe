"""The tenant directory in PostgreSQL (the gateway's own tables, ``tg_*``).

Every method runs in a gateway transaction (``SET LOCAL ROLE tenant_gateway_owner``).
Seat limits, downgrades and rotations lock the tenant row (``FOR UPDATE``) first, so
concurrent requests on any worker cannot break them. A change's audit entry is inserted in the
change's own transaction: if either fails, neither is kept. ``tg_audit`` is append-only
(migration 0007): no role the gateway runs as may update, delete or truncate it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from tenant_gateway.directory import TenantChanges
from tenant_gateway.exceptions import TooManyUsers
from tenant_gateway.models import (
    ApiKeyRecord,
    AuditEntry,
    PlanChange,
    Tenant,
    TenantStatus,
    User,
    effective_seat_limit,
)
from tenant_gateway.plans import Plan
from tenant_gateway.postgres.api_keys import KeyRows
from tenant_gateway.postgres.catalog import application_tables
from tenant_gateway.postgres.database import RUNTIME_ROLE, TENANT_SETTING, Database
from tenant_gateway.postgres.rows import (
    TENANT_COLUMNS,
    audited_change,
    insert_audit,
    insert_key,
    insert_user,
    tenant_of,
)
from tenant_gateway.postgres.users import UserRows

__all__ = ["PostgresDirectory"]


class PostgresDirectory(UserRows, KeyRows):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def start(self) -> None:
        await self._db.connect()

    async def close(self) -> None:
        await self._db.close()

    # -- tenants -------------------------------------------------------------------------------

    async def register(
        self, tenant: Tenant, admin: User, key: ApiKeyRecord, *, audit: AuditEntry | None = None
    ) -> None:
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
            await insert_user(conn, admin)
            await insert_key(conn, key)
            await insert_audit(conn, audit)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {TENANT_COLUMNS} FROM tg_tenants WHERE id = $1 AND status <> 'deleted'",
                tenant_id,
            )
        return None if row is None else tenant_of(row)

    async def list_tenants(self, *, limit: int, after: str | None) -> list[Tenant]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {TENANT_COLUMNS} FROM tg_tenants WHERE status <> 'deleted'"
                " AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $1",
                limit,
                after,
            )
        return [tenant_of(row) for row in rows]

    async def tenants_on_other_plans(
        self, plans: Collection[str], *, limit: int
    ) -> tuple[list[tuple[str, str]], int]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                "SELECT id, plan, count(*) OVER () AS total FROM tg_tenants"
                " WHERE status <> 'deleted' AND plan <> ALL($1::text[]) ORDER BY id LIMIT $2",
                list(plans),
                limit,
            )
        return [(row["id"], row["plan"]) for row in rows], rows[0]["total"] if rows else 0

    @staticmethod
    async def _locked_tenant(conn: Any, tenant_id: str) -> Tenant | None:
        row = await conn.fetchrow(
            f"SELECT {TENANT_COLUMNS} FROM tg_tenants"
            " WHERE id = $1 AND status <> 'deleted' FOR UPDATE",
            tenant_id,
        )
        return None if row is None else tenant_of(row)

    @staticmethod
    async def _check_seats(conn: Any, tenant: Tenant, plan: Plan) -> None:
        limit = effective_seat_limit(plan, tenant)
        if limit is not None:
            users = await conn.fetchval(
                "SELECT count(*) FROM tg_users WHERE tenant_id = $1", tenant.id
            )
            if users > limit:
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
        async with self._db.gateway_transaction() as conn:
            tenant = await self._locked_tenant(conn, tenant_id)
            if tenant is None:
                return None
            max_users = (
                None
                if changes.clear_max_users
                else (changes.max_users if changes.max_users is not None else tenant.max_users)
            )
            row = await conn.fetchrow(
                "UPDATE tg_tenants SET name = coalesce($2, name),"
                " admin_email = coalesce($3, admin_email), max_users = $4, updated_at = $5"
                f" WHERE id = $1 RETURNING {TENANT_COLUMNS}",
                tenant_id,
                changes.name,
                changes.admin_email,
                max_users,
                at,
            )
            if row is None:  # locked above, so it exists
                return None
            updated = tenant_of(row)
            await self._check_seats(conn, updated, plan)  # raising rolls the update back
            await insert_audit(conn, audit)
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
        async with self._db.gateway_transaction() as conn:
            tenant = await self._locked_tenant(conn, tenant_id)
            if tenant is None:
                return None
            await self._check_seats(conn, tenant, plan)
            await insert_audit(conn, audit)
            if tenant.plan == plan.name:
                return tenant
            row = await conn.fetchrow(
                "UPDATE tg_tenants SET plan = $2, updated_at = $3 WHERE id = $1"
                f" RETURNING {TENANT_COLUMNS}",
                tenant_id,
                plan.name,
                at,
            )
            if row is None:
                return None
            await conn.execute(
                "INSERT INTO tg_plan_changes"
                " (tenant_id, from_plan, to_plan, changed_at, calls_before)"
                " VALUES ($1, $2, $3, $4, $5)",
                tenant_id,
                tenant.plan,
                plan.name,
                at,
                calls_before,
            )
        return tenant_of(row)

    async def set_status(
        self, tenant_id: str, status: TenantStatus, *, audit: AuditEntry | None = None
    ) -> Tenant | None:
        row = await audited_change(
            self._db,
            audit,
            "UPDATE tg_tenants SET status = $2, updated_at = now()"
            f" WHERE id = $1 AND status <> 'deleted' RETURNING {TENANT_COLUMNS}",
            tenant_id,
            status.value,
        )
        return None if row is None else tenant_of(row)

    async def plan_history(self, tenant_id: str) -> list[PlanChange]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                "SELECT to_plan, changed_at, calls_before FROM tg_plan_changes"
                " WHERE tenant_id = $1 ORDER BY changed_at, id",
                tenant_id,
            )
        return [PlanChange(row["to_plan"], row["changed_at"], row["calls_before"]) for row in rows]

    async def delete_tenant(
        self, tenant_id: str, at: datetime, *, audit: AuditEntry | None = None
    ) -> bool:
        """Tombstone the tenant row (ids are never reused; invoices keep their tenant), delete
        its keys and users, and purge its rows from every application table, in one transaction."""
        async with self._db.gateway_transaction() as conn:
            deleted = await conn.fetchval(
                "UPDATE tg_tenants SET status = 'deleted', deleted_at = $2, updated_at = $2"
                " WHERE id = $1 AND status <> 'deleted' RETURNING id",
                tenant_id,
                at,
            )
            if deleted is None:
                return False
            await insert_audit(conn, audit)  # before the role below changes to the runtime one
            await conn.execute("DELETE FROM tg_api_keys WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM tg_users WHERE tenant_id = $1", tenant_id)
            tables = await application_tables(conn)
            # The app's rows are deleted as the runtime role under the tenant's own context,
            # children before parents, so only this tenant's rows can go.
            await conn.execute(
                "SELECT set_config('role', $1, true), set_config($2, $3, true)",
                RUNTIME_ROLE,
                TENANT_SETTING,
                tenant_id,
            )
            for table in reversed(tables):
                await conn.execute(f'DELETE FROM "{table}"')
        return True

    # -- webhooks ------------------------------------------------------------------------------

    async def set_webhook(
        self,
        tenant_id: str,
        url: str | None,
        secret: str | None,
        *,
        audit: AuditEntry | None = None,
    ) -> bool:
        found = await audited_change(
            self._db,
            audit,
            "UPDATE tg_tenants SET webhook_url = $2, webhook_secret = $3, updated_at = now()"
            " WHERE id = $1 AND status <> 'deleted' RETURNING id",
            tenant_id,
            url,
            secret,
        )
        return found is not None

    async def end_session(self, nonce: str, expires_at: datetime, now: datetime) -> None:
        async with self._db.gateway_transaction() as conn:
            await conn.execute("DELETE FROM tg_console_signouts WHERE expires_at <= $1", now)
            await conn.execute(
                "INSERT INTO tg_console_signouts (nonce, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (nonce) DO NOTHING",
                nonce,
                expires_at,
            )

    async def session_ended(self, nonce: str) -> bool:
        async with self._db.gateway_transaction() as conn:
            found = await conn.fetchval("SELECT 1 FROM tg_console_signouts WHERE nonce = $1", nonce)
        return found is not None

    async def webhook_target(self, tenant_id: str) -> tuple[str, str] | None:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                "SELECT webhook_url, webhook_secret FROM tg_tenants"
                " WHERE id = $1 AND status <> 'deleted' AND webhook_url IS NOT NULL",
                tenant_id,
            )
        return None if row is None else (row["webhook_url"], row["webhook_secret"])

    # -- audit ---------------------------------------------------------------------------------

    async def record_audit(self, entry: AuditEntry) -> None:
        async with self._db.gateway_transaction() as conn:
            await insert_audit(conn, entry)

    async def list_audit(
        self, tenant_id: str, *, limit: int, before: int | None
    ) -> list[AuditEntry]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, id, at, actor, action, target, ip FROM tg_audit"
                " WHERE tenant_id = $1 AND ($3::bigint IS NULL OR id < $3)"
                " ORDER BY id DESC LIMIT $2",
                tenant_id,
                limit,
                before,
            )
        return [
            AuditEntry(
                tenant_id=row["tenant_id"],
                actor=row["actor"],
                action=row["action"],
                target=row["target"],
                at=row["at"],
                ip=row["ip"],
                id=row["id"],
            )
            for row in rows
        ]
