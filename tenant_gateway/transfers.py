"""Exports and imports in one process: their slots (one per tenant, ``limit`` in all) and the
pace each one's client must keep.

A transfer holds a database connection for as long as its client takes, so how many may run
at once is bounded here, before any connection is taken. Claiming never awaits: two requests
cannot both see the last slot free. (Across processes, the tenant's lock taken in the
transfer's transaction, ``postgres.database.lock_transfer``, keeps it to one per tenant.)

How long it takes is bounded too: a client may wait at most the idle timeout between two
chunks (the HTTP edge bounds each wait), and ``TransferPace`` cuts one that keeps each wait
just under it (a byte every 9 s) or that never ends.
"""

from __future__ import annotations

from tenant_gateway.clock import Clock
from tenant_gateway.exceptions import ConfigurationError, TransferBusy

__all__ = ["TransferPace", "TransferSlot", "TransferSlots"]


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


class TransferPace:
    """The pace a transfer's client keeps, judged each time a chunk has moved (``moved``).

    Over each window of ``window`` seconds (the idle timeout), the client must move at least
    ``min_rate`` bytes a second on average: the first window is judged when it ends, each
    following one likewise. The time is wall time, whoever spent it, so a client cannot make
    a slow pace look fast by keeping the server busy. And whatever the pace, the transfer ends
    ``max_duration`` seconds after it began (``wait_limit`` shortens the last wait to match).
    """

    def __init__(self, clock: Clock, *, window: float, min_rate: int, max_duration: float) -> None:
        self._clock = clock
        self._window = window
        self._min_rate = min_rate
        self._max_duration = max_duration
        self._deadline = clock() + max_duration
        self.restart()

    def restart(self) -> None:
        """Start the first window now (an export: once its first chunk is ready, so the time
        the database took to count the rows is not held against the client)."""
        self._window_start = self._clock()
        self._window_bytes = 0

    def wait_limit(self, idle_timeout: float) -> float:
        """How long the next wait on the client may last: the idle timeout, or what is left
        before the deadline (zero or less: none)."""
        return min(idle_timeout, self._deadline - self._clock())

    def overdue(self) -> str | None:
        """Why the transfer must end now if its time is up, else None."""
        if self._clock() >= self._deadline:
            return f"it took longer than the {self._max_duration:g} s a transfer may last"
        return None

    def moved(self, size: int) -> str | None:
        """Count ``size`` bytes moved; why the transfer must end now, or None."""
        if (overdue := self.overdue()) is not None:
            return overdue
        self._window_bytes += size
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < self._window:
            return None
        if self._window_bytes < self._min_rate * elapsed:
            rate = self._window_bytes / elapsed
            return (
                f"the client moved {rate:.0f} bytes a second over {elapsed:.0f} s, under the"
                f" minimum of {self._min_rate}"
            )
        self._window_start, self._window_bytes = now, 0
        return None
