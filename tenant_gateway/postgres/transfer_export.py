"""Tenant export: the NDJSON stream of ``transfer``, read in one repeatable-read snapshot."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from datetime import datetime
from typing import TYPE_CHECKING

from tenant_gateway.clock import format_timestamp
from tenant_gateway.postgres.catalog import application_tables
from tenant_gateway.postgres.database import Database, as_owner, as_tenant, lock_transfer
from tenant_gateway.postgres.transfer import FORMAT, GATEWAY_TABLES, VERSION, Table, describe

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

__all__ = ["EXPORT_CHUNK_BYTES", "export_tenant"]


def _select(table: Table, excluded: frozenset[str], *, scoped_by_policy: bool) -> str:
    columns = ", ".join(f'"{c}"' for c in table.columns if c not in excluded)
    where = "" if scoped_by_policy else f' WHERE "{table.tenant_column}" = $1'
    order = ", ".join(f'"{c}"' for c in table.key) or "1"
    rows = f'SELECT {columns} FROM "{table.name}"{where} ORDER BY {order}'
    return f"SELECT row_to_json(r)::text FROM ({rows}) r"


FETCH_ROWS = 500


async def _rows(conn: Connection, query: str, *args: object) -> AsyncIterator[str]:
    """The query's one text column, ``FETCH_ROWS`` rows at a time, through a cursor declared in
    SQL: it lives in the transaction alone. (asyncpg's own cursor names a prepared statement,
    which outlives the transaction on the server connection: behind PgBouncer's transaction
    pooling, another client gets that connection, and a statement of the same name fails.)"""
    await conn.execute(f"DECLARE tg_export NO SCROLL CURSOR FOR {query}", *args)
    while rows := await conn.fetch(f"FETCH {FETCH_ROWS} FROM tg_export"):
        for row in rows:
            yield row[0]
    await conn.execute("CLOSE tg_export")


EXPORT_CHUNK_BYTES = 64 * 1024
"""Lines are sent in chunks of about this size: one send per row cost the event loop that
every other tenant's requests share more than reading the rows did."""


async def export_tenant(
    database: Database, tenant_id: str, now: datetime
) -> AsyncGenerator[bytes, None]:
    """The tenant's data as NDJSON, read in one repeatable-read snapshot, row by row, sent in
    chunks of whole lines."""
    async with aclosing(_export_lines(database, tenant_id, now)) as lines:
        header = await anext(lines, None)
        if header is None:
            return
        yield header  # alone: a transfer refused at its start shows before any row is read
        pending: list[bytes] = []
        size = 0
        async for line in lines:
            pending.append(line)
            size += len(line)
            if size >= EXPORT_CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)


async def _export_lines(
    database: Database, tenant_id: str, now: datetime
) -> AsyncGenerator[bytes, None]:
    async with database.transfer_connection() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await lock_transfer(conn, tenant_id)
            await as_owner(conn)
            gateway = [
                await describe(conn, name, column)
                for name, (column, _, _) in GATEWAY_TABLES.items()
            ]
            app_names = await application_tables(conn)
            app = [await describe(conn, name, "tenant_id") for name in app_names]
            counts: dict[str, int] = {}
            for table in gateway:
                counts[table.name] = await conn.fetchval(
                    f'SELECT count(*) FROM "{table.name}" WHERE "{table.tenant_column}" = $1',
                    tenant_id,
                )
            await as_tenant(conn, tenant_id)
            for table in app:
                counts[table.name] = await conn.fetchval(f'SELECT count(*) FROM "{table.name}"')
            header = {
                "format": FORMAT,
                "version": VERSION,
                "source_tenant": tenant_id,
                "exported_at": format_timestamp(now),
                "tables": [
                    {
                        "name": t.name,
                        "rows": counts[t.name],
                        "kind": "gateway" if t.name in GATEWAY_TABLES else "application",
                    }
                    for t in gateway + app
                ],
            }
            yield json.dumps(header, separators=(",", ":")).encode() + b"\n"
            await as_owner(conn)
            for table in gateway:
                excluded = GATEWAY_TABLES[table.name][2]
                query = _select(table, excluded, scoped_by_policy=False)
                prefix = b'{"table":"' + table.name.encode() + b'","row":'
                async for row in _rows(conn, query, tenant_id):
                    yield prefix + row.encode() + b"}\n"
            await as_tenant(conn, tenant_id)
            for table in app:
                query = _select(table, frozenset(), scoped_by_policy=True)
                prefix = b'{"table":"' + table.name.encode() + b'","row":'
                async for row in _rows(conn, query):
                    yield prefix + row.encode() + b"}\n"
