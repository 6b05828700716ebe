"""A circuit breaker for the counter store: a dead Redis costs microseconds, not a timeout.

closed ──(``threshold`` consecutive failures)──▶ open ──(``cooldown`` s)──▶ half-open
   ▲                                                                          │
   └───────────────(the one probe call succeeds)◀─────────────────────────────┘
                   (the probe fails: open again for another ``cooldown``)

While open, calls fail at once with ``StoreUnavailable``; every transition is logged.

Every probe ends in one of three reports: ``succeeded`` (the store answered), ``failed`` (it did
not) or ``released`` (the call failed for another reason, a ledger read or a cancellation,
which says nothing about the store: the next call probes instead). A probe that reports
nothing within ``probe_timeout`` is given up on, so no lost report can keep the circuit open.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from tenant_gateway.clock import Clock

__all__ = ["Breaker", "BreakerState"]

logger = logging.getLogger("tenant_gateway.breaker")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Breaker:
    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        threshold: int = 3,
        cooldown: float = 1.0,
        probe_timeout: float = 10.0,
    ):
        self.name = name
        self._clock = clock
        self._threshold = threshold
        self._cooldown = cooldown
        self._probe_timeout = probe_timeout
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0
        self.state = BreakerState.CLOSED

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one probe at a time: a call allowed
        while the state is not ``CLOSED`` is that probe, and must report how it ended."""
        if self.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if self.state is BreakerState.OPEN:
            if now - self._opened_at < self._cooldown:
                return False
            self._move(BreakerState.HALF_OPEN)
        if self._probing and now - self._probe_at < self._probe_timeout:
            return False
        self._probing = True
        self._probe_at = now
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._probing = False
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def failed(self) -> None:
        self._probing = False
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock()
            if self.state is not BreakerState.OPEN:
                self._move(BreakerState.OPEN)

    def released(self) -> None:
        """The probe ended without telling whether the store is back: the next call probes."""
        self._probing = False

    def _move(self, state: BreakerState) -> None:
        logger.warning("circuit %s: %s -> %s", self.name, self.state.value, state.value)
        self.state = state
