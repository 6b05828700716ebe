"""Plain in-process counts the request path keeps for ``/metrics``.

A prometheus_client metric takes a lock on every ``inc()``; these are bare ints in dicts and
lists, counted inline with no call beyond a dictionary update, and read only when ``/metrics``
is scraped (``metrics.py``). The event loop is the only writer, so they need no lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from tenant_gateway.models import Tenant

__all__ = ["DECISION_BUCKETS", "GateCounts", "Latencies", "NO_PLAN"]

NO_PLAN = ""
"""The plan of a refusal decided before the caller's plan is known (no key, an invalid one)."""

DECISION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
"""Upper bounds (seconds) of the quota decision's buckets: a Redis round trip on a LAN is well
under a millisecond; its timeout is 1 s."""


class GateCounts:
    """Calls the gate admitted, by plan; calls it refused, by (reason, plan)."""

    __slots__ = ("admitted", "refused")

    def __init__(self, plans: Iterable[str]) -> None:
        self.admitted: dict[str, int] = dict.fromkeys(plans, 0)
        """Every plan of the catalogue from the start: ``admitted[plan.name] += 1``, no lookup
        miss to handle on the hot path."""
        self.refused: dict[tuple[str, str], int] = {}

    def refuse(self, reason: str, tenant: Tenant | None) -> str:
        """Count a refusal of ``tenant``'s call (None: not known yet); the plan it counted
        under, which is ``NO_PLAN`` for a plan the catalogue lacks (labels stay bounded)."""
        plan = NO_PLAN if tenant is None or tenant.plan not in self.admitted else tenant.plan
        key = (reason, plan)
        self.refused[key] = self.refused.get(key, 0) + 1
        return plan


class Latencies:
    """A histogram's worth of durations: a count per bucket (the last one for anything above
    the highest bound) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = DECISION_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # a bound is inclusive: le
        self.total += seconds
