"""Invoices (SPEC §6): plan segments prorated to the second, overage, extra seats.

Every amount is computed in exact rational arithmetic and rounded once, half-up, at the line
level; the total is the sum of the lines. No float ever reaches an amount.

- **Plan segments.** Each plan the tenant had during the period is charged
  ``price × seconds active ÷ seconds in the period``, one line per segment. The first segment
  starts at registration when that falls inside the period. A draft (the open period) assumes
  the current plan runs to the end of the month.
- **Overage.** On the plan in force at the end of the period: calls beyond its monthly quota
  are billed per started 1,000 calls at its ``overage_cents_per_1000``.
- **Seats.** On the same plan: users beyond ``included_seats`` at ``seat_price_cents`` each,
  counted when the invoice is computed (at closing, for an issued invoice).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

from tenant_gateway.clock import Clock, Period, format_timestamp
from tenant_gateway.directory import TenantDirectory
from tenant_gateway.exceptions import ConfigurationError
from tenant_gateway.invoices import InvoiceStore
from tenant_gateway.ledger import UsageLedger, period_tallies
from tenant_gateway.models import Tenant
from tenant_gateway.plans import Plan, PlanCatalog
from tenant_gateway.quota import CounterStore
from tenant_gateway.usage import billed_calls

__all__ = ["Billing", "Segment", "build_invoice", "plan_segments", "round_half_up"]

logger = logging.getLogger("tenant_gateway.billing")

PlanChange = tuple[str, datetime]
"""(plan name, when it took effect)."""


def round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


@dataclass(frozen=True, slots=True)
class Segment:
    plan: Plan
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


def _plan(plans: PlanCatalog, name: str) -> Plan:
    plan = plans.get(name)
    if plan is None:
        raise ConfigurationError(f"plan {name!r} is not in the catalogue; cannot price it")
    return plan


def plan_segments(
    history: list[PlanChange], tenant: Tenant, period: Period, plans: PlanCatalog
) -> list[Segment]:
    """The plans in force during ``period``, each with the part of the period it covered."""
    start = max(period.start, tenant.created_at)
    end = period.end
    if start >= end:
        return []
    segments: list[Segment] = []
    current: str | None = None
    cursor = start
    for name, at in sorted(history, key=lambda change: change[1]):
        if at <= start:
            current = name
            continue
        if at >= end:
            break
        if current is not None and at > cursor:
            segments.append(Segment(_plan(plans, current), cursor, at))
        current, cursor = name, at  # sorted, and past start: never behind the cursor
    if current is None:
        current = tenant.plan
    segments.append(Segment(_plan(plans, current), cursor, end))
    return [segment for segment in segments if segment.seconds > 0]


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


def build_invoice(
    *,
    tenant: Tenant,
    period: Period,
    history: list[PlanChange],
    api_calls: int,
    users: int,
    plans: PlanCatalog,
    status: str,
    number: str | None = None,
    issued_at: datetime | None = None,
) -> dict[str, object]:
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
    final = segments[-1].plan if segments else _plan(plans, tenant.plan)
    quota = final.monthly_calls
    if final.overage_cents_per_1000 is not None and quota is not None and api_calls > quota:
        over = api_calls - quota
        started_thousands = -(-over // 1000)
        priced.append(
            _line(
                f"Overage: {over:,} calls beyond {quota:,}, billed per started 1,000",
                started_thousands,
                final.overage_cents_per_1000,
            )
        )
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

    async def _api_calls(self, key: tuple[str, str]) -> int:
        return billed_calls(await period_tallies(self._ledger, self._counters, key))

    async def _render(self, tenant: Tenant, period: Period, status: str) -> dict[str, object]:
        return build_invoice(
            tenant=tenant,
            period=period,
            history=await self._directory.plan_history(tenant.id),
            api_calls=await self._api_calls((tenant.id, str(period))),
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

    async def close_period(self, period: Period) -> int:
        """Issue every live tenant's invoice for an ended period; returns how many were new."""
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
                        _, created = await self._issue(tenant, period)
                    except ConfigurationError as exc:  # one tenant's bad plan stops no other
                        logger.error("invoice of %s for %s not issued: %s", tenant.id, period, exc)
                        continue
                    issued += created
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
