"""Invoices (SPEC §6): plan segments prorated to the second, overage, extra seats.

Every amount is computed in exact rational arithmetic and rounded once, half-up, at the line
level; the total is the sum of the lines. No float ever reaches an amount.

- **Plan segments.** Each plan the tenant had during the period is charged
  ``price × seconds active ÷ seconds in the period``, one line per segment. The first segment
  starts at registration when that falls inside the period. A draft (the open period) assumes
  the current plan runs to the end of the month.
- **Overage.** On the terms of the plan each call was made on, counted the way the quota
  decision counts: the month's n-th billable call, made while plan P was in force, is overage
  when n exceeds P's monthly quota (the counter is the tenant's and the month's, never the
  plan's). Each plan with ``overage_cents_per_1000`` bills its overage calls per started 1,000
  at its rate, one line per plan. So overage starts exactly where the ``RateLimit`` header shows
  ``r=0``, a whole month on one plan bills as it always did, and a plan change cannot move
  calls already made to another plan's terms.
- **Calls per segment.** A plan change stores the period's billable calls made before it
  (``calls_before``, read from the counters just before) in its own plan-history row, in the
  transaction that makes the change: the change and its count are committed together or not at
  all. A segment's calls are the difference between the counts at its ends. The count is never
  kept in the usage hash: that is tenant-influenced state, flushed to the ledger later, and a
  billing fact lost with it would fall back to an estimate a tenant can game. A change stored
  before the column existed (migration 0008, ``calls_before`` NULL) reads the snapshot earlier
  versions wrote into the usage hash (a ``calls@<µs>`` field, which ledgers of the time hold),
  else is estimated from the per-day tallies.
- **Seats.** On the plan in force at the end: users beyond ``included_seats`` at
  ``seat_price_cents`` each, counted when the invoice is computed (at closing, for an issued
  invoice).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from tenant_gateway.clock import Clock, Period, format_timestamp
from tenant_gateway.directory import TenantDirectory
from tenant_gateway.exceptions import PlanNotConfigured
from tenant_gateway.invoices import InvoiceStore
from tenant_gateway.ledger import UsageLedger, period_tallies
from tenant_gateway.models import PlanChange, Tenant
from tenant_gateway.plans import Plan, PlanCatalog
from tenant_gateway.quota import CounterStore
from tenant_gateway.usage import billed_calls

__all__ = [
    "Billing",
    "Segment",
    "build_invoice",
    "calls_at",
    "change_field",
    "plan_segments",
    "round_half_up",
    "segment_bounds",
]

logger = logging.getLogger("tenant_gateway.billing")


def round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


@dataclass(frozen=True, slots=True)
class Segment:
    plan: Plan
    start: datetime
    end: datetime
    calls_before: int | None = None
    """The calls stored with the change that started the segment (None: not stored)."""

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


def _plan(plans: PlanCatalog, name: str) -> Plan:
    plan = plans.get(name)
    if plan is None:
        raise PlanNotConfigured(name)
    return plan


def plan_segments(
    history: list[PlanChange], tenant: Tenant, period: Period, plans: PlanCatalog
) -> list[Segment]:
    """The plans in force during ``period``, each with the part of the period it covered and
    the calls stored with the change that started it."""
    start = max(period.start, tenant.created_at)
    end = period.end
    if start >= end:
        return []
    segments: list[Segment] = []
    current: PlanChange | None = None
    cursor = start
    for change in sorted(history, key=lambda change: change.at):
        if change.at <= start:
            current = change
            continue
        if change.at >= end:
            break
        if current is not None and change.at > cursor:
            segments.append(_segment(plans, current, cursor, change.at))
        current, cursor = change, change.at  # sorted, and past start: never behind the cursor
    if current is None:
        current = PlanChange(tenant.plan, start)
    segments.append(_segment(plans, current, cursor, end))
    return [segment for segment in segments if segment.seconds > 0]


def _segment(plans: PlanCatalog, change: PlanChange, start: datetime, end: datetime) -> Segment:
    """``change``'s plan from ``start`` (its own instant, or the period's start) to ``end``."""
    calls_before = change.calls_before if change.at == start else None
    return Segment(_plan(plans, change.plan), start, end, calls_before)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_SECONDS = 86_400


def change_field(at: datetime) -> str:
    """The usage-hash field in which versions before migration 0008 kept the period's billable
    calls when a plan change took effect at ``at`` (in integer microseconds: the instant the
    plan history stores). Read only, for changes stored without ``calls_before``; nothing
    writes it any more."""
    return f"calls@{(at - _EPOCH) // timedelta(microseconds=1)}"


def calls_at(
    at: datetime, tallies: Mapping[str, int], period: Period, stored: int | None = None
) -> int:
    """The period's billable calls made before ``at``, a plan change inside it: ``stored``,
    the count stored with the change; for a change stored without one, the snapshot an
    earlier version kept in the usage hash (``change_field``), else the per-day tallies
    (whole days before, and the day of the change in proportion to the part of it gone,
    rounded down)."""
    if stored is not None:
        return stored
    snapshot = tallies.get(change_field(at))
    if snapshot is not None:
        return snapshot
    elapsed = int((at - period.start).total_seconds())
    today = elapsed // _DAY_SECONDS + 1

    def billable(day: int) -> int:
        return tallies.get(f"day:{day:02d}", 0) - tallies.get(f"refday:{day:02d}", 0)

    before = sum(billable(day) for day in range(1, today))
    return before + billable(today) * (elapsed % _DAY_SECONDS) // _DAY_SECONDS


def segment_bounds(
    segments: list[Segment], tallies: Mapping[str, int], period: Period
) -> list[tuple[int, int]]:
    """Each segment's calls as positions in the month's count: (calls before it, calls by its
    end), from the counts at its ends. Bounds are kept in order and within the period's total
    (a refund counted after a change can leave its count above the total)."""
    total = billed_calls(tallies)
    bounds = [0]
    for segment in segments[1:]:
        before = calls_at(segment.start, tallies, period, segment.calls_before)
        bounds.append(max(bounds[-1], min(total, before)))
    bounds.append(total)
    return list(itertools.pairwise(bounds))


def _line(
    description: str, quantity: int, unit_amount: Fraction | int, **extra: object
) -> tuple[int, dict[str, object]]:
    """(amount in cents, the invoice line)."""
    amount = round_half_up(Fraction(unit_amount) * quantity)
    unit = round_half_up(Fraction(unit_amount))
    line = {
        "description": description,
        "quantity": quantity,
        "unit_amount_cents": unit,
        "amount_cents": amount,
        **extra,
    }
    return amount, line


def _overage_lines(
    segments: list[Segment], bounds: list[tuple[int, int]]
) -> list[tuple[int, dict[str, object]]]:
    """One line per plan with an overage rate on which calls passed its quota."""
    made: dict[str, int] = {}
    over: dict[str, int] = {}
    plans: dict[str, Plan] = {}
    for segment, (before, by_end) in zip(segments, bounds, strict=True):
        plan = segment.plan
        if plan.overage_cents_per_1000 is None or plan.monthly_calls is None:
            continue
        plans[plan.name] = plan
        made[plan.name] = made.get(plan.name, 0) + by_end - before
        over[plan.name] = over.get(plan.name, 0) + max(0, by_end - max(before, plan.monthly_calls))
    lines = []
    for name, plan in plans.items():
        if over[name] <= 0:
            continue
        lines.append(
            _line(
                f"Overage: {over[name]:,} calls on {name} beyond its {plan.monthly_calls:,}"
                " a month, billed per started 1,000",
                -(-over[name] // 1000),
                plan.overage_cents_per_1000 or 0,
                plan=name,
                calls=made[name],
                overage_calls=over[name],
            )
        )
    return lines


def build_invoice(
    *,
    tenant: Tenant,
    period: Period,
    history: list[PlanChange],
    tallies: Mapping[str, int],
    users: int,
    plans: PlanCatalog,
    status: str,
    number: str | None = None,
    issued_at: datetime | None = None,
) -> dict[str, object]:
    """``history``: the plan history with the calls stored with each change; ``tallies``: the
    period's usage (its ``calls``, refunds, per-day counts, and the snapshots earlier versions
    kept there for their plan changes)."""
    segments = plan_segments(history, tenant, period, plans)
    period_seconds = int((period.end - period.start).total_seconds())
    priced: list[tuple[int, dict[str, object]]] = []
    for segment in segments:
        fraction = Fraction(segment.seconds, period_seconds)
        whole = segment.seconds == period_seconds
        description = f"{segment.plan.name} plan, {period}" + (
            ""
            if whole
            else f" (prorated {segment.seconds:,} of {period_seconds:,} s,"
            f" {format_timestamp(segment.start)} to {format_timestamp(segment.end)})"
        )
        priced.append(
            _line(
                description,
                1,
                segment.plan.price_cents * fraction,
                plan=segment.plan.name,
                period_start=format_timestamp(segment.start),
                period_end=format_timestamp(segment.end),
                proration={"seconds": segment.seconds, "of_seconds": period_seconds},
            )
        )
    api_calls = billed_calls(tallies)
    priced += _overage_lines(segments, segment_bounds(segments, tallies, period))
    final = segments[-1].plan if segments else _plan(plans, tenant.plan)
    if final.seat_price_cents is not None and users > final.included_seats:
        extra = users - final.included_seats
        priced.append(
            _line(
                f"Additional seats: {users} users, {final.included_seats} included",
                extra,
                final.seat_price_cents,
            )
        )
    return {
        "id": f"inv_{tenant.id.removeprefix('tenant_')}_{period}",
        "number": number,
        "tenant_id": tenant.id,
        "period": str(period),
        "status": status,
        "currency": final.currency,
        "issued_at": None if issued_at is None else format_timestamp(issued_at),
        "api_calls": api_calls,
        "users": users,
        "lines": [line for _, line in priced],
        "total_cents": sum(amount for amount, _ in priced),
    }


class Billing:
    """Drafts for the open period, issued invoices for closed ones, and closing periods."""

    def __init__(
        self,
        *,
        directory: TenantDirectory,
        ledger: UsageLedger,
        counters: CounterStore,
        invoices: InvoiceStore,
        plans: PlanCatalog,
        clock: Clock,
        close_grace_seconds: float = 60.0,
    ) -> None:
        self._directory = directory
        self._ledger = ledger
        self._counters = counters
        self._invoices = invoices
        self._plans = plans
        self._clock = clock
        self._grace = close_grace_seconds
        self._closed_through: Period | None = None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def calls_before(self, tenant_id: str, at: datetime) -> int:
        """The period's billable calls counted so far, for a plan change taking effect at
        ``at``: read just before the change is stored (``calls_before`` of
        ``TenantDirectory.change_plan``), so every call counted so far is the old plan's.
        Reads only; ``StoreUnavailable`` when the counters cannot answer."""
        key = (tenant_id, str(Period.containing(at.timestamp())))
        return billed_calls(await self._counters.read(key))

    async def _render(self, tenant: Tenant, period: Period, status: str) -> dict[str, object]:
        return build_invoice(
            tenant=tenant,
            period=period,
            history=await self._directory.plan_history(tenant.id),
            tallies=await period_tallies(self._ledger, self._counters, (tenant.id, str(period))),
            users=await self._directory.count_users(tenant.id),
            plans=self._plans,
            status=status,
        )

    def _closable(self, period: Period) -> bool:
        return self._clock() >= period.end.timestamp() + self._grace

    async def invoice(self, tenant: Tenant, period: Period) -> str:
        """The invoice document (JSON text): issued if the period is closed, else a draft.
        The caller has checked that ``period`` is neither in the future nor before the tenant."""
        stored = await self._invoices.issued(tenant.id, str(period))
        if stored is not None:
            return stored
        if self._closable(period):
            document, _ = await self._issue(tenant, period)
            return document
        return _dump(await self._render(tenant, period, "draft"))

    async def list_issued(self, tenant: Tenant) -> list[str]:
        return await self._invoices.list_issued(tenant.id)

    async def _issue(self, tenant: Tenant, period: Period) -> tuple[str, bool]:
        draft = await self._render(tenant, period, "issued")
        issued_at = self._now()

        def render(number: str) -> str:
            return _dump({**draft, "number": number, "issued_at": format_timestamp(issued_at)})

        return await self._invoices.issue(tenant.id, str(period), issued_at, render)

    async def close_period(
        self, period: Period, progress: Callable[[], None] = lambda: None
    ) -> int:
        """Issue every live tenant's invoice for an ended period, calling ``progress`` after
        each tenant; returns how many were new."""
        if self._clock() < period.end.timestamp():
            raise ValueError(f"period {period} has not ended")
        done = await self._invoices.invoiced_tenants(str(period))
        issued = 0
        after: str | None = None
        while True:
            page = await self._directory.list_tenants(limit=500, after=after)
            if not page:
                return issued
            for tenant in page:
                if tenant.id not in done and tenant.created_at < period.end:
                    try:
                        issued += (await self._issue(tenant, period))[1]
                    except PlanNotConfigured as exc:  # one tenant's bad plan stops no other
                        logger.error("invoice of %s for %s not issued: %s", tenant.id, period, exc)
                progress()
            after = page[-1].id

    async def close_due(self) -> int | None:
        """Close the last period that ended more than the grace ago, once per process and by
        one process at a time: how many invoices this call issued, or None while another
        process is closing that period (the next call looks again, and finds it done)."""
        due = Period.containing(self._clock() - self._grace).previous
        if due == self._closed_through:
            return 0
        async with self._invoices.closing(str(due)) as mine:
            if not mine:
                return None
            issued = await self.close_period(due)
        self._closed_through = due
        return issued


def _dump(document: dict[str, object]) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)
