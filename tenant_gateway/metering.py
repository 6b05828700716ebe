"""Plan enforcement for one admitted key: burst rate, then the monthly quota (SPEC §2, §5).

One counter round trip decides the quota and returns the count the ``RateLimit`` header and
the threshold events need. Refusals raise a ``Problem`` that already carries its headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenant_gateway import problems
from tenant_gateway.clock import Clock, Period
from tenant_gateway.events import EventDispatcher
from tenant_gateway.exceptions import Problem, StoreUnavailable
from tenant_gateway.headers import Header, policy_header, remaining_header
from tenant_gateway.models import Tenant
from tenant_gateway.plans import Plan, PlanCatalog
from tenant_gateway.quota import CounterStore, UsageKey
from tenant_gateway.ratelimit import BurstDecision, BurstLimiter
from tenant_gateway.usage import UsageRecorder

__all__ = ["Meter", "Metered"]

_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class _Moment:
    """What the quota decision needs to know about the current second, computed once a second."""

    second: int
    period: str
    day: str
    reset: int
    """Seconds to the next period."""


@dataclass(slots=True)  # not frozen: a frozen dataclass takes twice as long to build
class Metered:
    """An admitted call: where it was counted, and the headers its response gets."""

    usage_key: UsageKey
    day: str
    headers: tuple[Header, ...]


def _with_headers(problem: Problem, headers: tuple[Header, ...]) -> Problem:
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
        plans: PlanCatalog,
        recorder: UsageRecorder,
        fail_mode: str = "closed",
    ) -> None:
        self._recorder = recorder
        self._fail_mode = fail_mode
        # A plan with neither limit has an empty policy: no header (RFC 8941: an empty list
        # is an absent field).
        self._policies: dict[str, tuple[Header, ...]] = {
            name: ((b"ratelimit-policy", policy),) if (policy := policy_header(plan)) else ()
            for name, plan in plans.items()
        }
        self._counters = counters
        self._burst = burst
        self._events = events
        self._clock = clock
        self._moment = _Moment(-1, "", "", 0)

    def _now(self) -> _Moment:
        now = self._clock()
        second = int(now)
        moment = self._moment
        if moment.second != second:
            period = Period.containing(now)
            start = period.start.timestamp()
            moment = self._moment = _Moment(
                second,
                str(period),
                f"{int((now - start) // _SECONDS_PER_DAY) + 1:02d}",
                period.seconds_left(second),
            )
        return moment

    def _fails_open(self, plan: Plan) -> bool:
        return (plan.fail_mode or self._fail_mode) == "open"

    def admit_locally(self, tenant: Tenant, plan: Plan) -> Metered | None:
        """The admission of a plan without a monthly quota whose burst window (if any) is in
        process: decided and counted inline, nothing to await (and no coroutine: this is the
        hot path). None for any other plan: ``await admit(…)``."""
        if plan.monthly_calls is not None:
            return None
        rate = plan.burst_per_second
        burst = None
        if rate is not None:
            burst = self._burst.acquire_now(tenant.id, rate)
            if burst is None:
                return None
        moment = self._now()
        usage_key = (tenant.id, moment.period)
        return self._unmetered(usage_key, moment.day, plan, burst)

    def _unmetered(
        self, usage_key: UsageKey, day: str, plan: Plan, burst: BurstDecision | None
    ) -> Metered:
        """A call with no quota to decide (after the burst limit): counted in process."""
        headers = self._policies[plan.name]
        if burst is not None:
            if not burst.allowed:
                raise self._burst_refusal(usage_key, day, plan, burst)
            remaining = remaining_header("burst", burst.remaining, 1)
            headers = (*headers, (b"ratelimit", remaining))
        self._recorder.admitted(usage_key, day)
        return Metered(usage_key, day, headers)

    def _burst_refusal(
        self, usage_key: UsageKey, day: str, plan: Plan, burst: BurstDecision
    ) -> Problem:
        self._recorder.rejected(usage_key, day, "burst")
        rate = plan.burst_per_second or 0
        refused = remaining_header("burst", 0, burst.retry_after)
        return _with_headers(
            problems.rate_limited(rate, burst.retry_after),
            (*self._policies[plan.name], (b"ratelimit", refused)),
        )

    async def admit(self, tenant: Tenant, plan: Plan) -> Metered:
        moment = self._now()
        reset, day = moment.reset, moment.day
        usage_key = (tenant.id, moment.period)
        headers = self._policies[plan.name]
        rate = plan.burst_per_second
        burst = None
        if rate is not None:
            try:
                burst = self._burst.acquire_now(tenant.id, rate) or await self._burst.acquire(
                    tenant.id, rate
                )
            except StoreUnavailable:  # the shared burst window is away
                if not self._fails_open(plan):
                    raise
        limit = plan.monthly_calls
        if limit is None:  # nothing to decide: count locally, no round trip
            return self._unmetered(usage_key, day, plan, burst)
        if burst is not None and not burst.allowed:
            raise self._burst_refusal(usage_key, day, plan, burst)
        try:
            admission = await self._counters.admit(usage_key, day, limit, plan.allows_overage)
        except StoreUnavailable:
            if not self._fails_open(plan):
                raise
            # Fail open: admit, count in process; the batch reaches Redis when it is back.
            self._recorder.admitted(usage_key, day)
            return Metered(usage_key, day, headers)
        remaining = remaining_header("monthly", limit - admission.used, reset)
        headers = (*headers, (b"ratelimit", remaining))
        if not admission.admitted:
            raise _with_headers(problems.quota_exceeded(limit, reset), headers)
        self._events.observe(tenant.id, usage_key[1], admission.used, limit)
        return Metered(usage_key, day, headers)
