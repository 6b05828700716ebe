"""Admin handlers that read: usage, invoices, the audit log, the OpenAPI document."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tenant_gateway import problems
from tenant_gateway.admin.base import AdminHandlers, ascii_digits, field_error, page_size
from tenant_gateway.admin.openapi import openapi_document
from tenant_gateway.clock import Period
from tenant_gateway.exceptions import PlanNotConfigured
from tenant_gateway.ledger import period_tallies
from tenant_gateway.models import Action, Tenant, effective_seat_limit
from tenant_gateway.usage import usage_csv, usage_report

__all__ = ["ReportHandlers"]


class ReportHandlers(AdminHandlers):
    """Usage (JSON or CSV), invoices, the audit log and the OpenAPI document."""

    async def usage(self, request: Request) -> Response:
        """JSON, or CSV with ``?format=csv`` or ``Accept: text/csv``."""
        report = await self._usage_report(request)
        requested = request.query_params.get("format")
        if requested not in (None, "json", "csv"):
            raise field_error("format", "must be json or csv")
        wants_csv = requested == "csv" or (
            requested is None and "text/csv" in request.headers.get("accept", "")
        )
        return _csv_answer(report) if wants_csv else JSONResponse(report)

    async def usage_csv(self, request: Request) -> Response:
        """The CSV under a path of its own: an operation answers one media type for a client
        generated from the OpenAPI document (openapi-python-client reads the first)."""
        return _csv_answer(await self._usage_report(request))

    async def _usage_report(self, request: Request) -> dict[str, object]:
        _, tenant = await self._tenant(request, Action.READ_USAGE)
        period = self._period(request)
        key = (tenant.id, str(period))
        if period == Period.containing(self.services.clock()):
            await self.services.recorder.flush()  # this process's pending tallies: reads are exact
            tallies = await self.services.counters.read(key)
        else:
            tallies = await period_tallies(self.services.ledger, self.services.counters, key)
        plan = self._tenant_plan(tenant)
        return usage_report(
            tenant_id=tenant.id,
            period=period,
            tallies=tallies,
            limit=plan.monthly_calls,
            users=await self.services.directory.count_users(tenant.id),
            max_users=effective_seat_limit(plan, tenant),
        )

    def _period(self, request: Request, tenant: Tenant | None = None) -> Period:
        """``?period=`` or the current one; 422 for a bad or future one, and with ``tenant``,
        404 for a month before it existed."""
        current = Period.containing(self.services.clock())
        raw = request.query_params.get("period")
        try:
            if raw is not None and not (raw.isascii() and len(raw) == len("YYYY-MM")):
                raise ValueError(raw)  # Period.parse's \d admits "٢٠٢٦-01", its $ a newline
            period = current if raw is None else Period.parse(raw)
        except ValueError:
            raise field_error("period", "must be YYYY-MM") from None
        if period > current:
            raise field_error("period", "must not be in the future")
        if tenant is not None and period < Period.containing(tenant.created_at.timestamp()):
            raise problems.not_found(f"The tenant did not exist in {period}.")
        return period

    async def invoice(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_BILLING)
        period = self._period(request, tenant)
        if period == Period.containing(self.services.clock()):
            await self.services.recorder.flush()  # refunds of this process, before the draft
        try:
            document = await self.services.billing.invoice(tenant, period)
        except PlanNotConfigured as exc:
            raise problems.plan_not_configured(exc.plan) from exc
        return Response(document, media_type="application/json")

    async def invoices(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_BILLING)
        documents = await self.services.billing.list_issued(tenant)
        return Response("[" + ",".join(documents) + "]", media_type="application/json")

    async def audit(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_AUDIT)
        limit = page_size(request)
        raw_before = request.query_params.get("before")
        if raw_before is not None and not ascii_digits(raw_before, 18):
            raise field_error("before", "must be an entry id")
        entries = await self.services.directory.list_audit(
            tenant.id, limit=limit + 1, before=int(raw_before) if raw_before else None
        )
        page = entries[:limit]
        return JSONResponse(
            {
                "items": [entry.to_json() for entry in page],
                "next_before": page[-1].id if len(entries) > limit else None,
            }
        )

    async def openapi(self, request: Request) -> Response:
        root_path = request.scope.get("root_path", "")
        document = openapi_document(root_path, signup_open=self.settings.allow_signup)
        return JSONResponse(document)


def _csv_answer(report: dict[str, object]) -> Response:
    filename = f"usage-{report['tenant_id']}-{report['period']}.csv"
    return Response(
        usage_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
