"""The operators' list of tenants: search, paging, status, plan and this month's quota use,
closest to the limit first; suspend and resume.

The list reads the same stores as the admin API's ``GET /`` and ``/usage``: the directory's
tenants and the month's counters (one batched read for all of them; a tenant whose counters
are not loaded yet is read as ``/usage`` reads it). It considers at most ``SCAN_MAX`` tenants.
Suspending and resuming are the admin API's own calls.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from tenant_gateway.admin.auth import require_operator
from tenant_gateway.clock import Period
from tenant_gateway.console.base import ConsoleHandlers, PageError
from tenant_gateway.models import Tenant, UsageKey
from tenant_gateway.usage import billed_calls

__all__ = ["PAGE_SIZE", "SCAN_MAX", "OperatorPages", "TenantRow"]

PAGE_SIZE = 25
SCAN_MAX = 10_000
"""Tenants the list reads at most, in id order (the admin API pages them all)."""
_QUERY_MAX = 200
_READS_AT_ONCE = 50
_DONE = {"suspended": "The tenant is suspended.", "resumed": "The tenant is resumed."}


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant: Tenant
    calls: int
    limit: int | None

    @property
    def used_percent(self) -> float | None:
        """Share of the monthly quota used, in %; None for an unlimited plan."""
        if self.limit is None:
            return None
        return 100.0 * self.calls / self.limit if self.limit else math.inf


def _matches(tenant: Tenant, query: str) -> bool:
    return any(query in text.casefold() for text in (tenant.name, tenant.id, tenant.admin_email))


class OperatorPages(ConsoleHandlers):
    async def tenants(self, request: Request) -> Response:
        visitor = await self.visitor(request)
        require_operator(visitor.caller)
        query = request.query_params.get("q", "")[:_QUERY_MAX].strip()
        raw_page = request.query_params.get("page", "1")
        if not (raw_page.isascii() and raw_page.isdigit() and 1 <= len(raw_page) <= 6):
            raise PageError(
                422,
                "validation_error",
                "The page must be a whole number.",
                [{"field": "page", "message": "must be an integer from 1"}],
            )
        page = max(1, int(raw_page))
        tenants = await self._all_tenants()
        if query:
            folded = query.casefold()
            tenants = [tenant for tenant in tenants if _matches(tenant, folded)]
        rows = await self._rows(tenants)
        rows.sort(
            key=lambda row: (
                -(row.used_percent if row.used_percent is not None else -1.0),
                row.tenant.name.casefold(),
                row.tenant.id,
            )
        )
        pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
        shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        return self.render(
            request,
            "operator.html",
            visitor=visitor,
            rows=shown,
            query=query,
            page=page,
            pages=pages,
            total=len(rows),
            period=str(Period.containing(self.services.clock())),
            notice=_DONE.get(request.query_params.get("done", "")),
        )

    async def _all_tenants(self) -> list[Tenant]:
        found: list[Tenant] = []
        after: str | None = None
        while len(found) < SCAN_MAX:
            page = await self.services.directory.list_tenants(
                limit=min(500, SCAN_MAX - len(found)), after=after
            )
            if not page:
                break
            found += page
            after = page[-1].id
        return found

    async def _rows(self, tenants: list[Tenant]) -> list[TenantRow]:
        period = str(Period.containing(self.services.clock()))
        counters = self.services.counters
        await self.services.recorder.flush()  # this process's pending tallies, as /usage does
        keys: list[UsageKey] = [(tenant.id, period) for tenant in tenants]
        tallies: dict[UsageKey, dict[str, int]] = dict(await counters.snapshots(keys))
        missing = [key for key in keys if key not in tallies]
        for start in range(0, len(missing), _READS_AT_ONCE):
            chunk = missing[start : start + _READS_AT_ONCE]
            for key, read in zip(
                chunk, await asyncio.gather(*(counters.read(key) for key in chunk)), strict=True
            ):
                tallies[key] = read
        rows = []
        for tenant, key in zip(tenants, keys, strict=True):
            plan = self.services.plans.get(tenant.plan)
            limit = None if plan is None else plan.monthly_calls
            rows.append(TenantRow(tenant, billed_calls(tallies[key]), limit))
        return rows

    async def _set_status(self, request: Request, action: str) -> Response:
        visitor, form = await self.change(request)
        require_operator(visitor.caller)
        tenant_id = self.tenant_id(request, visitor)
        await self.calls(request.scope, visitor.caller, "POST", f"/{tenant_id}/{action}")
        done = "suspended" if action == "suspend" else "resumed"
        if form.get("back") == "tenant":
            return self.redirect(request, f"/tenants/{tenant_id}?done={done}")
        return self.redirect(request, f"/tenants?done={done}")

    async def suspend(self, request: Request) -> Response:
        return await self._set_status(request, "suspend")

    async def resume(self, request: Request) -> Response:
        return await self._set_status(request, "resume")
