"""The usage ledger in PostgreSQL (``tg_usage``) and the event outbox (``tg_usage_events``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from tenant_gateway.postgres.database import Database
from tenant_gateway.quota import HYDRATED, UsageKey

__all__ = ["PostgresLedger"]


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
        # One order for every writer, so concurrent flushes lock rows alike and never deadlock.
        rows = sorted(
            (tenant_id, period, field, value)
            for (tenant_id, period), tallies in snapshots.items()
            for field, value in tallies.items()
            if field != HYDRATED
        )
        if not rows:
            return
        tenants, periods, fields, values = (list(column) for column in zip(*rows, strict=True))
        async with self._db.gateway_transaction() as conn:
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
