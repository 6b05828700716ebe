"""Slots for exports and imports in one process: one per tenant, ``limit`` in all.

A transfer holds a database connection for as long as its client takes, so how many may run
at once is bounded here, before any connection is taken. Claiming never awaits: two requests
cannot both see the last slot free. (Across processes, the tenant's lock in
``Database.transfer_connection`` keeps it to one per tenant.)
"""

from __future__ import annotations

from tenant_gateway.exceptions import ConfigurationError, TransferBusy

__all__ = ["TransferSlot", "TransferSlots"]


class TransferSlot:
    """One claimed slot; ``release`` gives it back (once, however often it is called)."""

    __slots__ = ("_owner", "_tenant_id")

    def __init__(self, owner: TransferSlots, tenant_id: str) -> None:
        self._owner: TransferSlots | None = owner
        self._tenant_id = tenant_id

    def release(self) -> None:
        if self._owner is not None:
            self._owner._running.discard(self._tenant_id)
            self._owner = None


class TransferSlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigurationError("transfer_concurrency must be at least 1")
        self.limit = limit
        self._running: set[str] = set()

    def claim(self, tenant_id: str) -> TransferSlot:
        """A slot for ``tenant_id``, or ``TransferBusy`` (the tenant's one is taken, or all are)."""
        if tenant_id in self._running:
            raise TransferBusy(
                "This tenant already has an export or import in progress.", per_tenant=True
            )
        if len(self._running) >= self.limit:
            raise TransferBusy(
                f"The server is running its maximum of {self.limit} exports and imports.",
                per_tenant=False,
            )
        self._running.add(tenant_id)
        return TransferSlot(self, tenant_id)
