"""The usage ledger: the durable record of every period's tallies, and the event outbox.

The counter store (Redis) is the hot path; every flush interval each process writes snapshots
of the hashes it touched. Every tally only grows, so a write keeps the larger of the stored and
the written value: retried, duplicated or reordered flushes never double-count or go backwards.
``MemoryLedger`` is the embedded mode's (durable only as long as the process);
``tenant_gateway.postgres.PostgresLedger`` is the durable one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from tenant_gateway.models import UsageKey
from tenant_gateway.quota import CounterStore
from tenant_gateway.tallies import HYDRATED, sound_tallies

__all__ = ["MemoryLedger", "UsageLedger", "merge_tallies", "period_tallies"]


class UsageLedger(Protocol):
    async def read(self, key: UsageKey) -> dict[str, int]: ...

    async def write(self, snapshots: Mapping[UsageKey, Mapping[str, int]]) -> None:
        """Store snapshots, keeping per field the larger of stored and written values. A value
        no tally may hold (``tallies.py``) is logged and left out; it never fails the rest."""

    async def claim_event(self, key: UsageKey, threshold: int, at: datetime) -> bool:
        """True for exactly one caller per (tenant, period, threshold), across all workers."""


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
        self._events: set[tuple[str, str, int]] = set()

    async def read(self, key: UsageKey) -> dict[str, int]:
        return dict(self._rows.get(key, {}))

    async def write(self, snapshots: Mapping[UsageKey, Mapping[str, int]]) -> None:
        for key, tallies in snapshots.items():
            fields = sound_tallies(tallies, f"a snapshot of {key[0]} {key[1]}")
            fields.pop(HYDRATED, None)
            self._rows[key] = merge_tallies(self._rows.get(key, {}), fields)

    async def claim_event(self, key: UsageKey, threshold: int, at: datetime) -> bool:
        event = (key[0], key[1], threshold)
        if event in self._events:
            return False
        self._events.add(event)
        return True
