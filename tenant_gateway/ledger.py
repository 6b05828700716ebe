"""The usage ledger: the durable record of every period's tallies, and the event outbox.

The counter store (Redis) is the hot path; every flush interval each process writes snapshots
of the hashes it touched. Every tally only grows, so a write keeps the larger of the stored and
the written value: retried, duplicated or reordered flushes never double-count or go backwards.
``MemoryLedger`` is the embedded mode's (durable only as long as the process);
``tenant_gateway.postgres.PostgresLedger`` is the durable one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Protocol

from tenant_gateway.clock import format_timestamp
from tenant_gateway.models import UsageKey
from tenant_gateway.quota import CounterStore
from tenant_gateway.tallies import HYDRATED, sound_tallies

__all__ = [
    "Delivery",
    "DeliveryOutcome",
    "MemoryLedger",
    "UsageLedger",
    "merge_tallies",
    "period_tallies",
]

DeliveryOutcome = Literal["delivered", "failed", "dropped", "no_webhook"]

RECENT_DELIVERIES = 20
"""How many of a tenant's latest quota events ``recent_events`` answers at most."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A quota event and how its webhook delivery ended (``outcome`` None: not yet)."""

    period: str
    threshold: int
    created_at: datetime
    outcome: DeliveryOutcome | None = None
    attempts: int = 0
    finished_at: datetime | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "period": self.period,
            "threshold": self.threshold,
            "created_at": format_timestamp(self.created_at),
            "outcome": self.outcome or "pending",
            "attempts": self.attempts,
            "finished_at": self.finished_at and format_timestamp(self.finished_at),
            "last_error": self.last_error,
        }


class UsageLedger(Protocol):
    async def read(self, key: UsageKey) -> dict[str, int]: ...

    async def write(self, snapshots: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """Store snapshots, keeping per field the larger of stored and written values. A value
        no tally may hold (``tallies.py``) is logged and left out; it never fails the rest."""

    async def claim_event(self, key: UsageKey, threshold: int, at: datetime) -> bool:
        """True for exactly one caller per (tenant, period, threshold), across all workers."""

    async def finish_event(self, tenant_id: str, delivery: Delivery) -> None:
        """Record how a claimed event's delivery ended: its outcome, attempts, finish and last
        error (the claim's ``created_at`` stays)."""

    async def recent_events(self, tenant_id: str) -> list[Delivery]:
        """The tenant's latest quota events (at most ``RECENT_DELIVERIES``), newest first."""


def merge_tallies(*tallies: Mapping[str, int]) -> dict[str, int]:
    """Field-wise maximum: the newest view of monotonic counters."""
    merged: dict[str, int] = {}
    for tally in tallies:
        for field, value in tally.items():
            if value > merged.get(field, value - 1):
                merged[field] = value
    return merged


async def period_tallies(
    ledger: UsageLedger, counters: CounterStore, key: UsageKey
) -> dict[str, int]:
    """A period's tallies: the ledger, plus what the counters hold that it has not had yet.
    Ledger rows no tally may hold (left by an import before imports were checked) are left out."""
    live = await counters.snapshots([key])
    stored = sound_tallies(await ledger.read(key), f"the ledger's {key[0]} {key[1]}")
    return merge_tallies(stored, live.get(key, {}))


class MemoryLedger:
    def __init__(self) -> None:
        self._rows: dict[UsageKey, dict[str, int]] = {}
        self._events: dict[str, dict[tuple[str, int], Delivery]] = {}
        """Per tenant, its quota events by (period, threshold)."""

    async def read(self, key: UsageKey) -> dict[str, int]:
        return dict(self._rows.get(key, {}))

    async def write(self, snapshots: Mapping[UsageKey, Mapping[str, int]]) -> None:
        for key, tallies in snapshots.items():
            fields = sound_tallies(tallies, f"a snapshot of {key[0]} {key[1]}")
            fields.pop(HYDRATED, None)
            self._rows[key] = merge_tallies(self._rows.get(key, {}), fields)

    async def claim_event(self, key: UsageKey, threshold: int, at: datetime) -> bool:
        events = self._events.setdefault(key[0], {})
        if (key[1], threshold) in events:
            return False
        events[key[1], threshold] = Delivery(key[1], threshold, at)
        return True

    async def finish_event(self, tenant_id: str, delivery: Delivery) -> None:
        events = self._events.get(tenant_id, {})
        claimed = events.get((delivery.period, delivery.threshold))
        if claimed is not None:  # the claim's time stays, as in PostgreSQL's row
            events[delivery.period, delivery.threshold] = replace(
                delivery, created_at=claimed.created_at
            )

    async def recent_events(self, tenant_id: str) -> list[Delivery]:
        mine = sorted(
            self._events.get(tenant_id, {}).values(),
            key=lambda d: (d.created_at, d.threshold),
            reverse=True,
        )
        return mine[:RECENT_DELIVERIES]
