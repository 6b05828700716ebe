"""What the admin API answers: one model per JSON document a handler returns, for the OpenAPI
document (``openapi.py``) and the clients generated from it.

Handlers build their JSON from the domain values (``Tenant.to_json``, ``usage_report``,
``build_invoice``…); these models describe it field for field and forbid any other field, so a
test that validates real answers against the document fails when the two drift apart.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from tenant_gateway.models import Role, TenantStatus

__all__ = [
    "ApiKey",
    "AuditEntry",
    "AuditPage",
    "CreatedApiKey",
    "FieldError",
    "ImportSummary",
    "Invoice",
    "InvoiceLine",
    "Problem",
    "Proration",
    "RegisteredTenant",
    "Tenant",
    "TenantPage",
    "UsageDay",
    "UsageReport",
    "UsageRoute",
    "User",
    "WebhookDelivery",
    "WebhookDeliveryList",
    "WebhookSecret",
    "WebhookTarget",
]

Period = Annotated[str, Field(pattern=r"^\d{4}-\d{2}$", description="A calendar month, YYYY-MM")]
Counts = dict[str, Annotated[int, Field(ge=0)]]


Absent = SkipJsonSchema[None]
"""With ``_sometimes()``: a member that is either there, with a value, or left out."""


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # left out is not null: the schema must not say null


def _sometimes(description: str | None = None) -> Any:
    return Field(None, description=description, json_schema_extra=_no_default)


class Answer(BaseModel):
    """A JSON answer: exactly these members (one more is drift, and fails the tests)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Tenant(Answer):
    id: str
    name: str
    plan: str
    status: TenantStatus
    max_users: int | None = Field(description="The tenant's own seat limit; null: the plan's")
    admin_email: str
    created_at: datetime


class RegisteredTenant(Tenant):
    api_key: str = Field(description="The tenant's first key (role admin): shown this once")


class TenantPage(Answer):
    items: list[Tenant]
    next_after: str | None = Field(description="Pass as ?after= for the next page; null: last")


class User(Answer):
    id: str
    email: str
    role: Role
    created_at: datetime


class ApiKey(Answer):
    """A key's metadata; the secret is never stored, so never listed."""

    id: str
    name: str | None
    role: Role
    prefix: str = Field(description="The key's first characters, to recognise it")
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedApiKey(ApiKey):
    api_key: str = Field(description="The secret: shown this once")


class UsageDay(Answer):
    date: date
    api_calls: int
    rejected_calls: int


class UsageRoute(Answer):
    route: str = Field(description="METHOD and route template, e.g. GET /items/{item_id}")
    calls: int
    by_status: Counts = Field(description="Calls by status class (2xx, 4xx…)")


class UsageReport(Answer):
    tenant_id: str
    period: Period
    api_calls: int
    rejected_calls: int
    rejected_by_reason: Counts
    refunded_calls: int
    limit: int | None = Field(description="Calls a month; null: unlimited")
    remaining: int | None
    resets_at: datetime
    users: int
    max_users: int | None = Field(description="The effective seat limit; null: unlimited")
    by_day: list[UsageDay]
    by_route: list[UsageRoute]


class Proration(Answer):
    seconds: int
    of_seconds: int


class InvoiceLine(Answer):
    """A plan segment (with ``plan``, ``period_start``, ``period_end``, ``proration``), an
    overage (with ``plan``, ``calls``, ``overage_calls``) or extra seats (none of them)."""

    description: str
    quantity: int
    unit_amount_cents: int
    amount_cents: int
    plan: str | Absent = _sometimes()
    period_start: datetime | Absent = _sometimes()
    period_end: datetime | Absent = _sometimes()
    proration: Proration | Absent = _sometimes()
    calls: int | Absent = _sometimes("Calls made on this plan this month")
    overage_calls: int | Absent = _sometimes("Of those, calls beyond the plan's quota")


class Invoice(Answer):
    id: str
    number: str | None = Field(description="Assigned when issued")
    tenant_id: str
    period: Period
    status: Literal["draft", "issued"] = Field(description="draft while the month is open")
    currency: str
    issued_at: datetime | None
    api_calls: int
    users: int
    lines: list[InvoiceLine]
    total_cents: int


class AuditEntry(Answer):
    id: int
    actor: str = Field(description="operator:<subject>, key:<key id> or anonymous")
    action: str
    target: str | None
    at: datetime
    ip: str | None


class AuditPage(Answer):
    items: list[AuditEntry]
    next_before: int | None = Field(description="Pass as ?before= for the next page; null: last")


class WebhookTarget(Answer):
    url: str | None


class WebhookDelivery(Answer):
    period: Period
    threshold: int = Field(description="The quota mark, in percent: 80 or 100")
    created_at: datetime = Field(description="When the call that reached the mark was made")
    outcome: Literal["pending", "delivered", "failed", "dropped", "no_webhook"] = Field(
        description="pending: not finished (or abandoned at a shutdown); failed: every attempt"
        " failed; dropped: the target was refused; no_webhook: none was set"
    )
    attempts: int = Field(ge=0)
    finished_at: datetime | None
    last_error: str | None = Field(description="Why the last attempt failed, if it did")


class WebhookDeliveryList(Answer):
    deliveries: list[WebhookDelivery] = Field(description="The latest 20 events, newest first")


class WebhookSecret(Answer):
    url: str
    secret: str = Field(description="Signs each delivery: shown this once")


class ImportSummary(Answer):
    imported: Counts = Field(description="Rows by table")
    skipped: Counts = Field(description="Rows by table")
    dry_run: bool


class FieldError(Answer):
    field: str
    message: str


class Problem(BaseModel):
    """An error (RFC 9457, ``application/problem+json``) with a stable ``code``; some carry
    more members (an import's ``line``, ``table`` and ``reason``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | Absent = _sometimes("validation_error: what is wrong, per field")
