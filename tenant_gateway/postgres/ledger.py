"""The usage ledger in PostgreSQL (``tg_usage``) and the event outbox (``tg_usage_events``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from tenant_gateway.ledger import RECENT_DELIVERIES, Delivery
from tenant_gateway.models import UsageKey
from tenant_gateway.postgres.database import Database
from tenant_gateway.tallies import HYDRATED, sound_tallies

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

__all__ = ["PostgresLedger"]

logger = logging.getLogger("tenant_gateway.postgres")

_ROW_REFUSED = ("22", "23", "54")
"""SQLSTATE classes that are a row's own fault: data exception, integrity constraint violation,
program limit (a field too long for the index). Anything else fails the whole write."""


def _refused_row(exc: asyncpg.PostgresError) -> bool:
    return str(getattr(exc, "sqlstate", ""))[:2] in _ROW_REFUSED


async def _upsert(conn: Connection, rows: list[tuple[str, str, str, int]]) -> None:
    tenants, periods, fields, values = (list(column) for column in zip(*rows, strict=True))
    await conn.execute(
        "INSERT INTO tg_usage (tenant_id, period, field, value)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"
        " ON CONFLICT (tenant_id, period, field) DO UPDATE"
        " SET value = GREATEST(tg_usage.value, EXCLUDED.value), updated_at = now()"
        " WHERE tg_usage.value < EXCLUDED.value",
        tenants,
        periods,
        fields,
        values,
    )


class PostgresLedger:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def read(self, key: UsageKey) -> dict[str, int]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                "SELECT field, value FROM tg_usage WHERE tenant_id = $1 AND period = $2",
                key[0],
                key[1],
            )
        return {row["field"]: row["value"] for row in rows}

    async def write(self, snapshots: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """Every row in one statement. A row PostgreSQL refuses (one no check here foresaw)
        costs itself only: the statement is retried row by row and that row left out."""
        # One order for every writer, so concurrent flushes lock rows alike and never deadlock.
        rows = sorted(
            (tenant_id, period, field, value)
            for (tenant_id, period), tallies in snapshots.items()
            for field, value in sound_tallies(
                tallies, f"a snapshot of {tenant_id} {period}"
            ).items()
            if field != HYDRATED
        )
        if not rows:
            return
        async with self._db.gateway_transaction() as conn:
            try:
                async with conn.transaction():  # a savepoint: a refused row leaves the rest
                    await _upsert(conn, rows)
                return
            except asyncpg.PostgresError as exc:
                if not _refused_row(exc):
                    raise
            for row in rows:
                try:
                    async with conn.transaction():
                        await _upsert(conn, [row])
                except asyncpg.PostgresError as exc:
                    if not _refused_row(exc):
                        raise
                    logger.warning("usage row left out of the ledger: %r: %s", row, exc)

    async def claim_event(self, key: UsageKey, threshold: int, at: datetime) -> bool:
        async with self._db.gateway_transaction() as conn:
            claimed = await conn.fetchval(
                "INSERT INTO tg_usage_events (tenant_id, period, threshold, created_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING threshold",
                key[0],
                key[1],
                threshold,
                at,
            )
        return claimed is not None

    async def finish_event(self, tenant_id: str, delivery: Delivery) -> None:
        async with self._db.gateway_transaction() as conn:
            await conn.execute(
                "UPDATE tg_usage_events SET outcome = $4, attempts = $5, last_error = $6,"
                " finished_at = $7,"
                " delivered_at = CASE WHEN $4::text = 'delivered' THEN $7::timestamptz END"
                " WHERE tenant_id = $1 AND period = $2 AND threshold = $3",
                tenant_id,
                delivery.period,
                delivery.threshold,
                delivery.outcome,
                delivery.attempts,
                None if delivery.last_error is None else delivery.last_error[:500],
                delivery.finished_at,
            )

    async def recent_events(self, tenant_id: str) -> list[Delivery]:
        async with self._db.gateway_transaction() as conn:
            rows = await conn.fetch(
                "SELECT period, threshold, created_at, outcome, attempts, finished_at,"
                " last_error FROM tg_usage_events WHERE tenant_id = $1"
                " ORDER BY created_at DESC, threshold DESC LIMIT $2",
                tenant_id,
                RECENT_DELIVERIES,
            )
        return [Delivery(*row) for row in rows]
