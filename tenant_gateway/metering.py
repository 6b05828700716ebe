"""Plan enforcement for one admitted key: burst rate, then the monthly quota (SPEC §2, §5).

One counter round trip decides the quota and returns the count the ``RateLimit`` header and
the threshold events need. Refusals raise a ``Problem`` that already carries its headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenant_gateway import problems
from tenant_gateway.clock import Clock, Period
from tenant_gateway.events import EventDispatcher
from tenant_gateway.exceptions import Problem
from tenant_gateway.headers import policy_header, remaining_header
from tenant_gateway.models import Tenant
from tenant_gateway.plans import Plan
from tenant_gateway.quota import CounterStore, UsageKey
from tenant_gateway.ratelimit import BurstLimiter

__all__ = ["Meter", "Metered"]

Header = tuple[bytes, bytes]
_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class Metered:
    """An admitted call: where it was counted, and the headers its response gets."""

    usage_key: UsageKey
    day: str
    headers: list[Header]


def _with_headers(problem: Problem, headers: list[Header]) -> Problem:
    for name, value in headers:
        problem.headers[name.decode("latin-1")] = value.decode("latin-1")
    return problem


class Meter:
    def __init__(
        self,
        counters: CounterStore,
        burst: BurstLimiter,
        events: EventDispatcher,
        clock: Clock,
    ) -> None:
        self._counters = counters
        self._burst = burst
        self._events = events
        self._clock = clock

    async def admit(self, tenant: Tenant, plan: Plan) -> Metered:
        now = self._clock()
        period = Period.containing(now)
        reset = period.seconds_left(now)
        usage_key = (tenant.id, str(period))
        day = f"{int((now - period.start.timestamp()) // _SECONDS_PER_DAY) + 1:02d}"
        headers = [(b"ratelimit-policy", policy_header(plan))]
        if plan.burst_per_second is not None:
            if not await self._burst.hit(tenant.id, plan.burst_per_second):
                await self._counters.reject(usage_key, day, "burst")
                stats = await self._burst.stats(tenant.id, plan.burst_per_second)
                raise _with_headers(
                    problems.rate_limited(plan.burst_per_second, stats.retry_after),
                    headers + [(b"ratelimit", remaining_header("burst", 0, stats.retry_after))],
                )
        limit = plan.monthly_calls
        admission = await self._counters.admit(usage_key, day, limit, plan.allows_overage)
        if limit is not None:
            headers.append(
                (b"ratelimit", remaining_header("monthly", limit - admission.used, reset))
            )
        elif plan.burst_per_second is not None:
            stats = await self._burst.stats(tenant.id, plan.burst_per_second)
            headers.append((b"ratelimit", remaining_header("burst", stats.remaining, 1)))
        if not admission.admitted:  # only a plan with a monthly limit refuses
            raise _with_headers(problems.quota_exceeded(limit or 0, reset), headers)
        self._events.observe(tenant.id, usage_key[1], admission.used, limit)
        return Metered(usage_key, day, headers)
