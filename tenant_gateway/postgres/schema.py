"""DDL: the gateway's schema migrations (SQL files in ``migrations/``), and ``run_ddl``, which
runs DDL under a lock timeout so that it never queues a table's other users behind itself.

Processes that migrate at once take turns on a transaction-level advisory lock, one migration
per transaction: no session state, so migrations run behind PgBouncer's transaction pooling too.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING

import asyncpg

from tenant_gateway.exceptions import StoreBusy

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

__all__ = ["DDL_ATTEMPTS", "DDL_LOCK_TIMEOUT", "migrate", "milliseconds", "run_ddl"]

logger = logging.getLogger("tenant_gateway.postgres")

DDL_LOCK_TIMEOUT = 2.0
"""Seconds DDL at start-up waits for its table's lock before it gives up (and tries again)."""
DDL_ATTEMPTS = 5
_MIGRATION_LOCK = 0x7467_6D69  # an arbitrary advisory-lock id owned by tenant_gateway
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATIONS_TABLE = (  # takes no lock when the table exists
    "CREATE TABLE IF NOT EXISTS tg_schema_migrations ("
    " version integer PRIMARY KEY, name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)


def milliseconds(seconds: float) -> str:
    """A duration as a quoted setting value (``'1000ms'``), at least 1 ms."""
    return f"'{max(1, round(seconds * 1000))}ms'"


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("tenant_gateway.postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def run_ddl(
    conn: Connection,
    apply: Callable[[], Awaitable[object]],
    what: str,
    *,
    lock_timeout: float = DDL_LOCK_TIMEOUT,
    attempts: int = DDL_ATTEMPTS,
    turn: int | None = None,
) -> None:
    """Run ``apply`` (DDL on ``conn``) in a transaction whose lock waits last at most
    ``lock_timeout`` s: DDL waiting for its table's lock (behind an export's long read, say)
    would queue every later query on that table behind itself. It gives up instead, pauses as
    long, and tries again, ``attempts`` times in all; then ``StoreBusy`` naming ``what``.

    With ``turn``, each attempt first takes the transaction-level advisory lock of that id,
    waiting as long as the holder needs (its own DDL is bounded the same way): processes that
    start together take turns, and the lock ends with the transaction, so it holds behind
    PgBouncer's transaction pooling too."""
    for attempt in range(1, attempts + 1):
        try:
            async with conn.transaction():
                if turn is not None:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", turn)
                await conn.execute(f"SET LOCAL lock_timeout = {milliseconds(lock_timeout)}")
                await apply()
            return
        except asyncpg.LockNotAvailableError:
            if attempt == attempts:
                break
            logger.warning("%s: its table is locked; try %d of %d", what, attempt, attempts)
            await asyncio.sleep(lock_timeout)
    raise StoreBusy(
        "PostgreSQL",
        f"{what} could not lock its table within {lock_timeout:g} s, {attempts} times:"
        " a long transaction holds it (an export?); try again once that has ended",
    )


async def migrate(conn: Connection) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied.

    Each runs in a transaction of its own under ``run_ddl`` (``StoreBusy`` rather than a wait
    that stalls the tables' other users), which first takes the migrations' advisory lock and
    then looks again whether another process applied it meanwhile: processes migrating at once
    apply each migration once, in order. A database already up to date costs two reads and
    takes no lock."""
    done = await _applied(conn)
    applied_now = []
    for version, name, sql in _migrations():
        if version in done:
            continue
        applied = False

        async def apply(version: int = version, name: str = name, sql: str = sql) -> None:
            nonlocal applied
            await conn.execute(_MIGRATIONS_TABLE)
            if version in await _applied(conn):
                return  # another process applied it while this one waited for its turn
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO tg_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied = True

        await run_ddl(conn, apply, f"migration {name}", turn=_MIGRATION_LOCK)
        if applied:
            applied_now.append(name)
    return applied_now


async def _applied(conn: Connection) -> set[int]:
    if await conn.fetchval("SELECT to_regclass('tg_schema_migrations')") is None:
        return set()
    return {row["version"] for row in await conn.fetch("SELECT version FROM tg_schema_migrations")}
