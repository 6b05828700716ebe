"""The asyncpg pool, schema migrations, and the tenant transaction.

Exports and imports run on a pool of their own (``transfer_connection``): however long their
clients take, they never hold a connection the request path or the admin API needs.

The tenant context is set per transaction only (``set_config(…, true)``), together with
``SET LOCAL ROLE`` to the runtime role, so nothing of it survives the transaction — not on
commit, rollback, exception or cancellation — and the connection goes back to the pool clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit

import asyncpg

from tenant_gateway.context import current_database, current_tenant
from tenant_gateway.exceptions import (
    ConfigurationError,
    NoTenantContext,
    StoreUnavailable,
    TransferBusy,
    redact_url,
)

__all__ = [
    "OWNER_ROLE",
    "RUNTIME_ROLE",
    "TENANT_SETTING",
    "TRANSFER_APPLICATION_NAME",
    "Database",
    "as_owner",
    "as_tenant",
    "isolate_table",
    "tenant_transaction",
]

logger = logging.getLogger("tenant_gateway.postgres")

RUNTIME_ROLE = "tenant_gateway_app"
OWNER_ROLE = "tenant_gateway_owner"
TENANT_SETTING = "tenant_gateway.tenant_id"
_MIGRATION_LOCK = 0x7467_6D69  # an arbitrary advisory-lock id owned by tenant_gateway
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
TRANSFER_APPLICATION_NAME = "tenant_gateway.transfer"
"""``application_name`` of the transfers' connections (visible in ``pg_stat_activity``)."""
_TRANSFER_LOCK = "SELECT pg_try_advisory_lock(hashtext('tg_transfer'), hashtext($1))"
_TRANSFER_UNLOCK = "SELECT pg_advisory_unlock(hashtext('tg_transfer'), hashtext($1))"

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    PooledConnection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PooledConnection
# Raised by asyncpg itself when the server is gone; caught around the caller's block too.
_DRIVER_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)
# Also possible while connecting or acquiring — but inside the caller's block an OSError or a
# TimeoutError may be the caller's own (an HTTP call, say), so there they pass through.
_CONNECT_ERRORS = (OSError, TimeoutError, *_DRIVER_ERRORS)


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("tenant_gateway.postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class Database:
    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        transfer_pool_size: int = 2,
        transfer_statement_timeout: float | None = None,
    ):
        """``transfer_pool_size`` connections at most for exports and imports, opened when one
        needs it; each of their statements is bounded by ``transfer_statement_timeout`` s."""
        if urlsplit(url).scheme not in ("postgres", "postgresql"):
            raise ConfigurationError(f"database_url must be postgresql://…, got {redact_url(url)}")
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._transfer_pool_size = transfer_pool_size
        self._transfer_statement_timeout = transfer_statement_timeout
        self._pool: asyncpg.Pool | None = None
        self._transfer_pool: asyncpg.Pool | None = None

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable("PostgreSQL", redact_url(self.url), str(exc) or type(exc).__name__)

    async def connect(self) -> None:
        """Open the pool and apply pending migrations (idempotent)."""
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._timeout,
            )
        except (*_CONNECT_ERRORS, asyncpg.InvalidCatalogNameError) as exc:
            raise self.unavailable(exc) from exc
        self._pool = pool
        async with self.connection() as conn:
            await migrate(conn)
        # min_size=0: connects nothing now; a process that never transfers holds none.
        self._transfer_pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=self._transfer_pool_size,
            timeout=self._timeout,
            command_timeout=self._transfer_statement_timeout,
            server_settings={"application_name": TRANSFER_APPLICATION_NAME},
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool; connections still held after ``timeout`` seconds are cut."""
        pools = [p for p in (self._pool, self._transfer_pool) if p is not None]
        self._pool = self._transfer_pool = None
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), timeout)
            except TimeoutError:
                logger.error("PostgreSQL connections still in use after %s s: terminated", timeout)
                pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PooledConnection]:
        """A pooled connection; driver connection failures become ``StoreUnavailable``."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("PostgreSQL", redact_url(self.url), "the pool is not open")
        try:
            conn = await pool.acquire(timeout=self._timeout)
        except _CONNECT_ERRORS as exc:
            raise self.unavailable(exc) from exc
        try:
            yield conn
        except _DRIVER_ERRORS as exc:
            raise self.unavailable(exc) from exc
        finally:
            try:
                await pool.release(conn)
            except _CONNECT_ERRORS:  # died with the server: the pool has dropped it already
                logger.debug("released a broken PostgreSQL connection", exc_info=True)

    @asynccontextmanager
    async def transfer_connection(self, tenant_id: str) -> AsyncIterator[PooledConnection]:
        """A connection of the transfers' own pool, holding the tenant's transfer lock (a
        session advisory lock): ``TransferBusy`` if a transfer of the tenant holds it already,
        in any process. A statement over the pool's timeout is the store's failure here
        (``StoreUnavailable``), like a broken connection."""
        pool = self._transfer_pool
        if pool is None:
            raise StoreUnavailable("PostgreSQL", redact_url(self.url), "the pool is not open")
        try:
            conn = await pool.acquire(timeout=self._timeout)
        except _CONNECT_ERRORS as exc:
            raise self.unavailable(exc) from exc
        try:
            if not await conn.fetchval(_TRANSFER_LOCK, tenant_id):
                raise TransferBusy(
                    "This tenant already has an export or import in progress.", per_tenant=True
                )
            try:
                yield conn
            finally:
                # If this fails (a broken connection), the lock went with the session; if it
                # never runs (cancelled), the pool's reset on release drops it.
                with contextlib.suppress(*_DRIVER_ERRORS, TimeoutError, asyncpg.PostgresError):
                    await conn.execute(_TRANSFER_UNLOCK, tenant_id)
        except (*_DRIVER_ERRORS, TimeoutError) as exc:
            raise self.unavailable(exc) from exc
        finally:
            try:
                await pool.release(conn)
            except _CONNECT_ERRORS:
                logger.debug("released a broken PostgreSQL connection", exc_info=True)

    @asynccontextmanager
    async def gateway_transaction(self) -> AsyncIterator[PooledConnection]:
        """A transaction as the table-owning role, for the gateway's own cross-tenant queries
        (key lookup by hash, registration, operator listings). Never handed to the app."""
        async with self.connection() as conn, conn.transaction():
            await as_owner(conn)
            yield conn

    @asynccontextmanager
    async def tenant_transaction(self, tenant_id: str) -> AsyncIterator[PooledConnection]:
        """A transaction as the runtime role with the tenant context set, so the isolation
        policies filter every statement (see the README for what that does not cover)."""
        if not tenant_id:
            raise NoTenantContext("a tenant transaction needs a tenant id")
        async with self.connection() as conn, conn.transaction():
            await as_tenant(conn, tenant_id)
            yield conn


async def as_owner(conn: Connection) -> None:
    """For the rest of the transaction: the table-owning role (cross-tenant gateway work)."""
    await conn.execute(f"SET LOCAL ROLE {OWNER_ROLE}")


async def as_tenant(conn: Connection, tenant_id: str) -> None:
    """For the rest of the transaction: the runtime role, with the tenant context the isolation
    policies read (``set_config(…, true)``: undone at commit or rollback)."""
    await conn.execute(
        "SELECT set_config('role', $1, true), set_config($2, $3, true)",
        RUNTIME_ROLE,
        TENANT_SETTING,
        tenant_id,
    )


async def migrate(conn: Connection) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS tg_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"] for row in await conn.fetch("SELECT version FROM tg_schema_migrations")
        }
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO tg_schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def isolate_table(conn: Connection, table: str) -> None:
    """Put an application table with a ``tenant_id text`` column under tenant isolation.

    Enables and forces row-level security, installs a policy whose USING and WITH CHECK both
    compare ``tenant_id`` with the tenant context (read once per statement), and grants the
    runtime role plain DML on it. With no context set, no row is visible or writable.
    Idempotent; call it from the application's own migration.
    """
    if _IDENTIFIER_RE.match(table) is None:
        raise ConfigurationError(f"table name {table!r} must be a plain lower-case identifier")
    condition = f"tenant_id = (SELECT current_setting('{TENANT_SETTING}', true))"
    await conn.execute(
        f"""
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
        DROP POLICY IF EXISTS tenant_isolation ON {table};
        CREATE POLICY tenant_isolation ON {table} USING ({condition}) WITH CHECK ({condition});
        GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {RUNTIME_ROLE};
        """
    )


@asynccontextmanager
async def tenant_transaction() -> AsyncIterator[PooledConnection]:
    """The wrapped app's way into Postgres: a transaction scoped to the current request's tenant.

    ``async with tenant_transaction() as conn: await conn.fetch("SELECT * FROM projects")``
    Raises ``NoTenantContext`` outside a request the gateway admitted: it never runs unscoped.
    """
    tenant = current_tenant.get()
    database = current_database.get()
    if tenant is None:
        raise NoTenantContext("tenant_transaction() used outside a gateway-admitted request")
    if database is None:
        raise NoTenantContext("tenant_transaction() needs a gateway configured with database_url")
    async with database.tenant_transaction(tenant.id) as conn:
        yield conn
