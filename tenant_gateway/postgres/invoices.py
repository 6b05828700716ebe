"""Issued invoices in PostgreSQL (``tg_invoices``), numbered from one sequence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from tenant_gateway.invoices import Render, invoice_number
from tenant_gateway.postgres.database import Database

__all__ = ["PostgresInvoices"]


class PostgresInvoices:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def issued(self, tenant_id: str, period: str) -> str | None:
        async with self._db.gateway_transaction() as conn:
            document: str | None = await conn.fetchval(
                "SELECT document FROM tg_invoices WHERE tenant_id = $1 AND period = $2",
                tenant_id,
                period,
            )
        return document

    async def list_issued(self, tenant_id: str) -> list[str]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                "SELECT document FROM tg_invoices WHERE tenant_id = $1 ORDER BY period DESC",
                tenant_id,
            )
        return [row["document"] for row in rows]

    async def invoiced_tenants(self, period: str) -> set[str]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch("SELECT tenant_id FROM tg_invoices WHERE period = $1", period)
        return {row["tenant_id"] for row in rows}

    @asynccontextmanager
    async def closing(self, period: str) -> AsyncIterator[bool]:
        # A transaction-level lock, in a transaction kept open for the whole close: it ends with
        # the transaction (or the lost connection), and it holds behind PgBouncer's transaction
        # pooling, where a session lock would stay on whichever server connection took it.
        async with self._db.connection() as conn, conn.transaction():
            held: bool = await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext('tg_close'), hashtext($1))", period
            )
            yield held

    async def issue(
        self, tenant_id: str, period: str, at: datetime, render: Render
    ) -> tuple[str, bool]:
        async with self._db.gateway_transaction() as conn:
            # Serialise closers of this invoice; the loser finds the winner's document.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('tg_invoice'), hashtext($1 || '/' || $2))",
                tenant_id,
                period,
            )
            existing: str | None = await conn.fetchval(
                "SELECT document FROM tg_invoices WHERE tenant_id = $1 AND period = $2",
                tenant_id,
                period,
            )
            if existing is not None:
                return existing, False
            sequence = await conn.fetchval("SELECT nextval('tg_invoice_number_seq')")
            document = render(invoice_number(sequence))
            await conn.execute(
                "INSERT INTO tg_invoices (tenant_id, period, number, issued_at, document)"
                " VALUES ($1, $2, $3, $4, $5)",
                tenant_id,
                period,
                sequence,
                at,
                document,
            )
        return document, True
