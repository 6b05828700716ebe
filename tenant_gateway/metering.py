"""Plan enforcement for one admitted key: burst rate, then the monthly quota (docs/plans.md).

One counter round trip decides the quota and returns the count the ``RateLimit`` header and
the threshold events need. Refusals raise a ``Refusal`` that already carries its headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter

from tenant_gateway.clock import Clock, Period
from tenant_gateway.events import EventDispatcher
from tenant_gateway.exceptions import BurstLimited, BurstRefused, QuotaExceeded, StoreUnavailable
from tenant_gateway.headers import Header, policy_header, remaining_header
from tenant_gateway.models import Tenant, UsageKey
from tenant_gateway.observations import Latencies
from tenant_gateway.plans import Plan, PlanCatalog
from tenant_gateway.quota import CounterStore
from tenant_gateway.ratelimit import BurstLimiter
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
        self.decisions = Latencies()
        """How long the counter store took to answer each quota decision (``/metrics``)."""

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
        rate = plan.burst_per_second
        if plan.monthly_calls is not None or (rate is not None and self._burst.shared):
            return None
        moment = self._now()
        usage_key = (tenant.id, moment.period)
        headers = self._policies[plan.name]
        if rate is not None:
            try:
                left = self._burst.take(tenant.id, rate)
            except BurstRefused as refused:
                raise self._burst_refusal(usage_key, moment.day, plan, refused) from None
        else:
            left = None
        return self._unmetered(usage_key, moment.day, headers, left)

    def _unmetered(
        self, usage_key: UsageKey, day: str, headers: tuple[Header, ...], burst_left: int | None
    ) -> Metered:
        """A call with no quota to decide (after the burst limit): counted in process."""
        if burst_left is not None:
            headers = (*headers, (b"ratelimit", remaining_header("burst", burst_left, 1)))
        self._recorder.admitted(usage_key, day)
        return Metered(usage_key, day, headers)

    def _burst_refusal(
        self, usage_key: UsageKey, day: str, plan: Plan, refused: BurstRefused
    ) -> BurstLimited:
        self._recorder.rejected(usage_key, day, "burst")
        rate = plan.burst_per_second or 0
        refusal = remaining_header("burst", 0, refused.retry_after)
        return BurstLimited(
            rate, refused.retry_after, (*self._policies[plan.name], (b"ratelimit", refusal))
        )

    async def admit(self, tenant: Tenant, plan: Plan) -> Metered:
        moment = self._now()
        reset, day = moment.reset, moment.day
        usage_key = (tenant.id, moment.period)
        headers = self._policies[plan.name]
        rate = plan.burst_per_second
        burst_left = None
        if rate is not None:
            try:
                burst_left = await self._burst.acquire(tenant.id, rate)
            except BurstRefused as refused:
                raise self._burst_refusal(usage_key, day, plan, refused) from None
            except StoreUnavailable:  # the shared burst window is away
                if not self._fails_open(plan):
                    raise
        limit = plan.monthly_calls
        if limit is None:  # nothing to decide: count locally, no round trip
            return self._unmetered(usage_key, day, headers, burst_left)
        started = perf_counter()
        try:
            admission = await self._counters.admit(usage_key, day, limit, plan.allows_overage)
        except StoreUnavailable:
            if not self._fails_open(plan):
                raise
            # Fail open: admit, count in process; the batch reaches Redis when it is back.
            self._recorder.admitted(usage_key, day)
            return Metered(usage_key, day, headers)
        self.decisions.observe(perf_counter() - started)
        remaining = remaining_header("monthly", limit - admission.used, reset)
        headers = (*headers, (b"ratelimit", remaining))
        if not admission.admitted:
            raise QuotaExceeded(limit, reset, headers)
        self._events.observe(tenant.id, usage_key[1], admission.used, limit)
        return Metered(usage_key, day, headers)
