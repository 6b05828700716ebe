"""What the admin API's handlers share (``AdminHandlers``), and the checks of path and query
values every resource uses."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request

from tenant_gateway import problems
from tenant_gateway.admin.auth import Caller, OperatorAuth, authenticate, authorize
from tenant_gateway.admin.deadline import TenantAdmission
from tenant_gateway.exceptions import Problem
from tenant_gateway.keys import is_id, mint_key
from tenant_gateway.models import Action, ApiKeyRecord, AuditEntry, Role, Tenant
from tenant_gateway.plans import Plan
from tenant_gateway.services import Services

__all__ = ["AdminHandlers", "ascii_digits", "audit_text", "field_error", "page_size", "path_id"]

_PAGE_DEFAULT = 50
_PAGE_MAX = 500
_AUDIT_TEXT_MAX = 200


def field_error(field: str, message: str, detail: str = "Invalid request.") -> Problem:
    return problems.validation_error(detail, [{"field": field, "message": message}])


def ascii_digits(raw: str, most: int) -> bool:
    """``str.isdigit`` alone admits ``²`` and ``٣``, which ``int`` then refuses."""
    return raw.isascii() and raw.isdigit() and len(raw) <= most


def page_size(request: Request) -> int:
    raw = request.query_params.get("limit", str(_PAGE_DEFAULT))
    if not ascii_digits(raw, len(str(_PAGE_MAX))) or not 1 <= int(raw) <= _PAGE_MAX:
        raise field_error("limit", f"must be an integer from 1 to {_PAGE_MAX}")
    return int(raw)


def path_id(request: Request, name: str) -> str:
    """A path id, or 404 without a query when it cannot name anything (NUL, too long…)."""
    value: str = request.path_params[name]
    if not is_id(value):
        raise problems.not_found()
    return value


def audit_text(text: str) -> str:
    """``text`` fit for the audit log: control and format characters (NUL, line breaks, bidi
    overrides, zero-width), separators and lone surrogates escaped as ``\\u{hex}`` (and ``\\``
    doubled, so an escape cannot be forged), at most 200 characters."""
    escaped = "".join(
        "\\\\" if c == "\\" else c if c.isprintable() else f"\\u{{{ord(c):x}}}" for c in text
    )
    if len(escaped) > _AUDIT_TEXT_MAX:
        return escaped[: _AUDIT_TEXT_MAX - 1] + "…"
    return escaped


class AdminHandlers:
    """What every group of admin handlers shares: the services, how operator tokens are
    verified, the per-tenant admission, and the steps each handler takes (who is calling,
    which tenant, the audit entry of a change)."""

    def __init__(
        self, services: Services, operators: OperatorAuth | None, admission: TenantAdmission
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.operators = operators
        self._admission = admission

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.services.clock(), UTC)

    async def _caller(self, request: Request) -> Caller:
        return await authenticate(request, self.services.resolver, self.operators)

    async def _tenant(self, request: Request, action: Action) -> tuple[Caller, Tenant]:
        tenant_id = request.path_params["tenant_id"]
        caller = await self._caller(request)
        authorize(caller, tenant_id, action)
        if not caller.is_operator:
            self._admission.admit(request.scope, tenant_id)
        tenant = await self.services.directory.get_tenant(path_id(request, "tenant_id"))
        if tenant is None:
            raise problems.not_found()
        return caller, tenant

    def _plan(self, name: str) -> Plan:
        """The plan a request names: 422 unless the catalogue has it."""
        plan = self.services.plans.get(name)
        if plan is None:
            raise field_error("plan", f"must be one of {', '.join(sorted(self.services.plans))}")
        return plan

    def _tenant_plan(self, tenant: Tenant) -> Plan:
        """The plan the tenant is on: 503 ``plan_not_configured`` when the catalogue lost it."""
        plan = self.services.plans.get(tenant.plan)
        if plan is None:
            raise problems.plan_not_configured(tenant.plan)
        return plan

    def _entry(
        self,
        request: Request,
        caller: Caller,
        tenant_id: str,
        action: str,
        target: str | None = None,
    ) -> AuditEntry:
        """The entry recording a change: handed to the directory call that makes the change
        (``audit=``), which writes both in one transaction. Actor and target are made safe to
        display."""
        client = request.client
        return AuditEntry(
            tenant_id=tenant_id,
            actor=audit_text(caller.actor),
            action=action,
            target=None if target is None else audit_text(target),
            at=self._now(),
            ip=client.host if client else None,
        )

    async def _audit(
        self,
        request: Request,
        caller: Caller,
        tenant_id: str,
        action: str,
        target: str | None = None,
    ) -> None:
        """Record an action that changes nothing in the directory (an export)."""
        await self.services.directory.record_audit(
            self._entry(request, caller, tenant_id, action, target)
        )

    async def _changed(self, tenant_id: str) -> None:
        await self.services.invalidator.tenant_changed(tenant_id)

    def _mint(
        self, tenant_id: str, name: str | None, role: Role, expires_at: datetime | None
    ) -> tuple[str, ApiKeyRecord]:
        return mint_key(tenant_id, name, role, self._now(), expires_at)
