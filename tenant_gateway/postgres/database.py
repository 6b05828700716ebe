"""The asyncpg pool, schema migrations, and the tenant transaction.

Exports and imports run on a pool of their own (``transfer_connection``): however long their
clients take, they never hold a connection the request path or the admin API needs.

No lock wait is unbounded: the gateway's own transactions wait at most ``lock_timeout`` for a
row another transaction holds (``StoreBusy``), and DDL at start-up gives up on a lock after a
few seconds rather than queue every query on the table behind it (``schema.run_ddl``).

The tenant context is set per transaction only (``set_config(…, true)``), together with
``SET LOCAL ROLE`` to the runtime role, so nothing of it survives the transaction — not on
commit, rollback, exception or cancellation — and the connection goes back to the pool clean.

Nothing here keeps state in the database session beyond one transaction: locks are
transaction-level advisory locks, settings ``SET LOCAL``. So it all works behind PgBouncer in
transaction pooling mode, which hands each transaction whichever server connection is free
(with ``?statement_cache_size=0`` in the URL: see ``url.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from tenant_gateway.context import current_database, current_tenant
from tenant_gateway.exceptions import (
    ConfigurationError,
    NoTenantContext,
    StoreBusy,
    StoreUnavailable,
    TransferBusy,
    redact_url,
)
from tenant_gateway.postgres.schema import migrate, milliseconds
from tenant_gateway.postgres.url import parse_postgres_url

__all__ = [
    "OWNER_ROLE",
    "POOLER_ERRORS",
    "RUNTIME_ROLE",
    "TENANT_SETTING",
    "TRANSFER_APPLICATION_NAME",
    "Database",
    "as_owner",
    "as_tenant",
    "is_identifier",
    "lock_transfer",
    "store_unavailable",
    "tenant_transaction",
]

logger = logging.getLogger("tenant_gateway.postgres")

RUNTIME_ROLE = "tenant_gateway_app"
OWNER_ROLE = "tenant_gateway_owner"
TENANT_SETTING = "tenant_gateway.tenant_id"
_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
TRANSFER_APPLICATION_NAME = "tenant_gateway.transfer"
"""``application_name`` of the transfers' connections (visible in ``pg_stat_activity``)."""
# A transaction-level advisory lock (released at commit or rollback, so it holds behind
# PgBouncer's transaction pooling too), keyed by a 64-bit hash of the tenant id.
_TRANSFER_LOCK = (
    "SELECT pg_try_advisory_xact_lock(hashtextextended('tenant_gateway.transfer:' || $1, 0))"
)

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
# While a connection is being opened, any error the server (or PgBouncer) sends is a refusal of
# the connection: a wrong login, no such database, too many connections.
_OPEN_ERRORS = (*_CONNECT_ERRORS, asyncpg.PostgresError)
POOLER_ERRORS = (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError)
"""What asyncpg's named prepared statements meet behind a transaction pooler when the URL lacks
``?statement_cache_size=0``: the server connection lent for this transaction holds another
client's statement of the same name, or not the one prepared on another."""
_POOLER_HINT = "behind PgBouncer in transaction pooling mode, the URL needs ?statement_cache_size=0"


def is_identifier(name: str) -> bool:
    """A plain lower-case SQL identifier, safe to quote into a statement."""
    return _IDENTIFIER_RE.match(name) is not None


class Database:
    def __init__(
        self,
        url: str,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        timeout: float = 5.0,
        transfer_pool_size: int = 2,
        transfer_statement_timeout: float | None = None,
        lock_timeout: float = 1.0,
    ):
        """The main pool holds ``min_size`` to ``max_size`` connections (default: the URL's
        ``pool_min_size`` and ``pool_max_size``, else 1 and 10); ``transfer_pool_size`` at most
        for exports and imports, opened when one needs it, each of their statements bounded by
        ``transfer_statement_timeout`` s. A gateway transaction waits at most ``lock_timeout`` s
        for any one lock. A URL ``parse_postgres_url`` refuses is a ``ConfigurationError``."""
        if lock_timeout <= 0:
            raise ConfigurationError("lock_timeout must be positive")
        self.url = url
        self._parsed = parse_postgres_url(url)
        self._min_size = self._parsed.pool_min_size if min_size is None else min_size
        self._max_size = self._parsed.pool_max_size if max_size is None else max_size
        if not 0 <= self._min_size <= self._max_size or self._max_size < 1:
            raise ConfigurationError(
                f"the pool's sizes must be 0 <= min ({self._min_size}) <= max ({self._max_size}),"
                " max at least 1"
            )
        self._timeout = timeout
        self._transfer_pool_size = transfer_pool_size
        self._transfer_statement_timeout = transfer_statement_timeout
        self.lock_timeout = lock_timeout
        self._gateway_settings = (
            f"SET LOCAL ROLE {OWNER_ROLE}; SET LOCAL lock_timeout = {milliseconds(lock_timeout)}"
        )
        self._pool: asyncpg.Pool | None = None
        self._transfer_pool: asyncpg.Pool | None = None

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        return store_unavailable(self.url, exc)

    async def connect(self) -> None:
        """Open the pool and apply pending migrations (idempotent). ``StoreUnavailable`` when
        no connection opens (refused, a wrong login, no such database…)."""
        if self._pool is not None:
            return
        cache = self._parsed.statement_cache_size
        try:
            pool = await asyncpg.create_pool(
                self._parsed.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._timeout,
                statement_cache_size=cache,
            )
        except asyncpg.ClientConfigurationError as exc:  # a URL option asyncpg refuses
            raise ConfigurationError(f"database_url {redact_url(self.url)}: {exc}") from None
        except _OPEN_ERRORS as exc:
            raise self.unavailable(exc) from exc
        self._pool = pool
        async with self.connection() as conn:
            try:
                await migrate(conn)
            except asyncpg.InsufficientPrivilegeError as exc:
                raise ConfigurationError(
                    f"the login of {redact_url(self.url)} may not apply the migrations ({exc}):"
                    f" the first time it must be able to create roles, then be a member of"
                    f" {OWNER_ROLE}"
                ) from None
        # min_size=0: connects nothing now; a process that never transfers holds none.
        self._transfer_pool = await asyncpg.create_pool(
            self._parsed.dsn,
            statement_cache_size=cache,
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

    def pool_connections(self) -> tuple[int, int, int]:
        """The main pool's (open, idle, most it may open) connections, for ``/metrics``."""
        pool = self._pool
        if pool is None:
            return 0, 0, self._max_size
        return pool.get_size(), pool.get_idle_size(), self._max_size

    def connection(self) -> AbstractAsyncContextManager[PooledConnection]:
        """A pooled connection; driver connection failures (and prepared statements lost to a
        transaction pooler) become ``StoreUnavailable``."""
        return self._pooled(self._pool, (*_DRIVER_ERRORS, *POOLER_ERRORS))

    def transfer_connection(self) -> AbstractAsyncContextManager[PooledConnection]:
        """A connection of the transfers' own pool (the transfer takes its tenant's lock in its
        transaction: ``lock_transfer``). A statement over the pool's timeout is the store's
        failure here (``StoreUnavailable``), like a broken connection."""
        return self._pooled(self._transfer_pool, (*_DRIVER_ERRORS, *POOLER_ERRORS, TimeoutError))

    @asynccontextmanager
    async def _pooled(
        self, pool: asyncpg.Pool | None, failures: tuple[type[BaseException], ...]
    ) -> AsyncIterator[PooledConnection]:
        """A connection of ``pool``; what ``failures`` names becomes ``StoreUnavailable``."""
        if pool is None:
            raise StoreUnavailable("PostgreSQL", redact_url(self.url), "the pool is not open")
        try:
            conn = await pool.acquire(timeout=self._timeout)
        except _OPEN_ERRORS as exc:
            raise self.unavailable(exc) from exc
        try:
            yield conn
        except failures as exc:
            raise self.unavailable(exc) from exc
        finally:
            try:
                await pool.release(conn)
            except _CONNECT_ERRORS:  # died with the server: the pool has dropped it already
                logger.debug("released a broken PostgreSQL connection", exc_info=True)

    @asynccontextmanager
    async def gateway_transaction(self) -> AsyncIterator[PooledConnection]:
        """A transaction as the table-owning role, for the gateway's own cross-tenant queries
        (key lookup by hash, registration, operator listings). Never handed to the app.

        A statement waits at most ``lock_timeout`` for a lock (a tenant row an import holds,
        say): past it the transaction is rolled back and ``StoreBusy`` raised, so a held row
        costs its callers a second, not a shared connection each for as long as it is held."""
        try:
            async with self.connection() as conn, conn.transaction():
                await conn.execute(self._gateway_settings)
                yield conn
        except asyncpg.LockNotAvailableError as exc:
            raise StoreBusy(
                "PostgreSQL",
                f"a row this needs stayed locked for more than {self.lock_timeout:g} s",
            ) from exc

    @asynccontextmanager
    async def tenant_transaction(self, tenant_id: str) -> AsyncIterator[PooledConnection]:
        """A transaction as the runtime role with the tenant context set, so the isolation
        policies filter every statement (docs/isolation.md says what that does not cover)."""
        if not tenant_id:
            raise NoTenantContext("a tenant transaction needs a tenant id")
        async with self.connection() as conn, conn.transaction():
            await as_tenant(conn, tenant_id)
            yield conn


def store_unavailable(url: str, exc: BaseException) -> StoreUnavailable:
    """``exc`` (a driver's or the server's error) as the store's failure, in one line."""
    reason = str(exc).partition("\n")[0] or type(exc).__name__
    if type(exc) is TimeoutError and not str(exc):
        reason = "timed out"
    if isinstance(exc, POOLER_ERRORS):
        reason = f"{reason} ({_POOLER_HINT})"
    return StoreUnavailable("PostgreSQL", redact_url(url), reason)


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


async def lock_transfer(conn: Connection, tenant_id: str) -> None:
    """Take the tenant's transfer lock for the rest of the caller's transaction, or raise
    ``TransferBusy`` if a transfer of the tenant holds it, in this process or any other."""
    if not await conn.fetchval(_TRANSFER_LOCK, tenant_id):
        raise TransferBusy(
            "This tenant already has an export or import in progress.", per_tenant=True
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
