"""What a plan change would do to this month's invoice, shown before it is confirmed.

The draft is priced by ``billing.build_invoice`` twice from the same inputs the admin API's
invoice reads (plan history, the month's tallies, the seats): as it stands, and with the change
taking effect now, carrying the calls counted so far as the change will store them. So the
preview is the invoice's own arithmetic, not a second one.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from tenant_gateway.billing import build_invoice
from tenant_gateway.clock import Period
from tenant_gateway.ledger import period_tallies
from tenant_gateway.models import PlanChange, Tenant
from tenant_gateway.services import Services
from tenant_gateway.usage import billed_calls

__all__ = ["preview_plan_change"]


async def preview_plan_change(
    services: Services, tenant: Tenant, plan: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(this month's draft as it stands, the draft if ``tenant`` moved to ``plan`` now)."""
    now = services.clock()
    at = datetime.fromtimestamp(now, UTC)
    period = Period.containing(now)
    await services.recorder.flush()  # this process's pending tallies, as the invoice does
    tallies = await period_tallies(services.ledger, services.counters, (tenant.id, str(period)))
    history = await services.directory.plan_history(tenant.id)
    if not history:
        history = [PlanChange(tenant.plan, tenant.created_at)]
    users = await services.directory.count_users(tenant.id)

    def draft(subject: Tenant, changes: list[PlanChange]) -> dict[str, Any]:
        return build_invoice(
            tenant=subject,
            period=period,
            history=changes,
            tallies=tallies,
            users=users,
            plans=services.plans,
            status="draft",
        )

    before = draft(tenant, history)
    after = draft(
        dataclasses.replace(tenant, plan=plan),
        [*history, PlanChange(plan, at, billed_calls(tallies))],
    )
    return before, after
