"""The tenant directory's users in PostgreSQL: seats checked under the tenant row's lock."""

from __future__ import annotations

from tenant_gateway.exceptions import SeatLimitReached, UserExists
from tenant_gateway.models import AuditEntry, Role, User
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.rows import (
    USER_COLUMNS,
    audited_change,
    insert_audit,
    insert_user,
    user_of,
)

__all__ = ["UserRows"]


class UserRows:
    """The directory's users (``PostgresDirectory`` is made of this and the other parts)."""

    _db: Database

    async def add_user(
        self, user: User, seat_limit: int | None, *, audit: AuditEntry | None = None
    ) -> None:
        async with self._db.gateway_transaction() as conn:
            await conn.execute("SELECT 1 FROM tg_tenants WHERE id = $1 FOR UPDATE", user.tenant_id)
            duplicate = await conn.fetchval(
                "SELECT 1 FROM tg_users WHERE tenant_id = $1 AND lower(email) = lower($2)",
                user.tenant_id,
                user.email,
            )
            if duplicate:
                raise UserExists(user.email)
            if seat_limit is not None:
                users = await conn.fetchval(
                    "SELECT count(*) FROM tg_users WHERE tenant_id = $1", user.tenant_id
                )
                if users >= seat_limit:
                    raise SeatLimitReached(seat_limit)
            await insert_user(conn, user)
            await insert_audit(conn, audit)

    async def list_users(self, tenant_id: str) -> list[User]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {USER_COLUMNS} FROM tg_users WHERE tenant_id = $1 ORDER BY created_at, id",
                tenant_id,
            )
        return [user_of(row) for row in rows]

    async def get_user(self, tenant_id: str, user_id: str) -> User | None:
        async with self._db.gateway_transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {USER_COLUMNS} FROM tg_users WHERE tenant_id = $1 AND id = $2",
                tenant_id,
                user_id,
            )
        return None if row is None else user_of(row)

    async def update_user(
        self, tenant_id: str, user_id: str, role: Role, *, audit: AuditEntry | None = None
    ) -> User | None:
        row = await audited_change(
            self._db,
            audit,
            f"UPDATE tg_users SET role = $3 WHERE tenant_id = $1 AND id = $2"
            f" RETURNING {USER_COLUMNS}",
            tenant_id,
            user_id,
            role.value,
        )
        return None if row is None else user_of(row)

    async def delete_user(
        self, tenant_id: str, user_id: str, *, audit: AuditEntry | None = None
    ) -> bool:
        deleted = await audited_change(
            self._db,
            audit,
            "DELETE FROM tg_users WHERE tenant_id = $1 AND id = $2 RETURNING id",
            tenant_id,
            user_id,
        )
        return deleted is not None

    async def count_users(self, tenant_id: str) -> int:
        async with self._db.gateway_transaction() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM tg_users WHERE tenant_id = $1", tenant_id
            )
        return count
