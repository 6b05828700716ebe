"""Issued invoices: stored once, with a gap-free sequential number, never recomputed.

``issue`` is safe to call twice, or from two processes at once: the first caller stores the
document and takes the next number; every other caller gets that same stored document back.
``closing`` lets one process at a time close a period, so that N workers at the turn of the
month do the work once instead of N times over.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Protocol

__all__ = ["InvoiceStore", "MemoryInvoices", "Render", "invoice_number"]

Render = Callable[[str], str]
"""Given the invoice number, the JSON document to store."""


def invoice_number(sequence: int) -> str:
    return f"INV-{sequence:06d}"


class InvoiceStore(Protocol):
    async def issued(self, tenant_id: str, period: str) -> str | None: ...

    async def list_issued(self, tenant_id: str) -> list[str]:
        """Documents, newest period first."""

    async def issue(
        self, tenant_id: str, period: str, at: datetime, render: Render
    ) -> tuple[str, bool]:
        """The stored document, and whether this call stored it."""

    async def invoiced_tenants(self, period: str) -> set[str]: ...

    def closing(self, period: str) -> AbstractAsyncContextManager[bool]:
        """Whether the caller may close ``period`` now, held until the block ends: False while
        another closer (in any process sharing the store) has it."""


class MemoryInvoices:
    def __init__(self) -> None:
        self._documents: dict[tuple[str, str], str] = {}
        self._numbers = itertools.count(1)
        self._closing: set[str] = set()

    @asynccontextmanager
    async def closing(self, period: str) -> AsyncIterator[bool]:
        if period in self._closing:
            yield False
            return
        self._closing.add(period)
        try:
            yield True
        finally:
            self._closing.discard(period)

    async def issued(self, tenant_id: str, period: str) -> str | None:
        return self._documents.get((tenant_id, period))

    async def list_issued(self, tenant_id: str) -> list[str]:
        mine = [(p, d) for (t, p), d in self._documents.items() if t == tenant_id]
        return [document for _, document in sorted(mine, reverse=True)]

    async def invoiced_tenants(self, period: str) -> set[str]:
        return {tenant_id for tenant_id, p in self._documents if p == period}

    async def issue(
        self, tenant_id: str, period: str, at: datetime, render: Render
    ) -> tuple[str, bool]:
        existing = self._documents.get((tenant_id, period))
        if existing is not None:
            return existing, False
        document = render(invoice_number(next(self._numbers)))
        self._documents[(tenant_id, period)] = document
        return document, True
