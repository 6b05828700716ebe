"""Admin handlers for tenants: sign-up, reading and changing a tenant, its status, plan and
webhook."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tenant_gateway import problems
from tenant_gateway.admin.auth import authenticate, require_operator
from tenant_gateway.admin.base import AdminHandlers, field_error, page_size, path_id
from tenant_gateway.admin.schemas import (
    ChangePlanRequest,
    RegisterRequest,
    UpdateTenantRequest,
    WebhookRequest,
)
from tenant_gateway.bodies import parse_body
from tenant_gateway.client_limits import client_address
from tenant_gateway.directory import TenantChanges
from tenant_gateway.keys import ID_MAX_LENGTH, is_id, new_id, new_webhook_secret
from tenant_gateway.models import Action, Role, Tenant, TenantStatus, User

__all__ = ["TenantHandlers"]


class TenantHandlers(AdminHandlers):
    """Register, list, read, change, delete, suspend and resume tenants; plans; webhooks."""

    async def register(self, request: Request) -> Response:
        caller = await authenticate(
            request, self.services.resolver, self.operators, required=not self.settings.allow_signup
        )
        if not self.settings.allow_signup:
            require_operator(caller)
        elif not caller.is_operator and self.services.signup_limiter is not None:
            # Every self-service attempt counts, valid or not; operators are not limited.
            limiter, address = self.services.signup_limiter, client_address(request.scope)
            wait = limiter.over(address) or await limiter.hit(address)
            if wait:
                raise problems.too_many_attempts("sign-ups", wait)
        body = await parse_body(request, RegisterRequest, self.settings.admin_max_body_bytes)
        offered = self.settings.signup_plans
        if offered is not None and body.plan not in offered and not caller.is_operator:
            raise field_error("plan", f"must be one of {', '.join(sorted(offered))}")
        self._plan(body.plan)
        now = self._now()
        tenant = Tenant(
            id=new_id("tenant"),
            name=body.name,
            plan=body.plan,
            status=TenantStatus.ACTIVE,
            max_users=body.max_users,
            admin_email=body.admin_email,
            created_at=now,
        )
        admin = User(new_id("usr"), tenant.id, body.admin_email, Role.ADMIN, now)
        secret, key = self._mint(tenant.id, "registration", Role.ADMIN, None)
        await self.services.directory.register(
            tenant,
            admin,
            key,
            audit=self._entry(request, caller, tenant.id, "tenant.register", tenant.id),
        )
        return JSONResponse({**tenant.to_json(), "api_key": secret}, status_code=201)

    async def list_tenants(self, request: Request) -> Response:
        require_operator(await self._caller(request))
        limit = page_size(request)
        after = request.query_params.get("after") or None
        if after is not None and not is_id(after):
            raise field_error("after", f"must be a tenant id (at most {ID_MAX_LENGTH} characters)")
        tenants = await self.services.directory.list_tenants(limit=limit + 1, after=after)
        page = tenants[:limit]
        return JSONResponse(
            {
                "items": [tenant.to_json() for tenant in page],
                "next_after": page[-1].id if len(tenants) > limit else None,
            }
        )

    async def get_tenant(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_TENANT)
        return JSONResponse(tenant.to_json())

    async def update_tenant(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        body = await parse_body(request, UpdateTenantRequest, self.settings.admin_max_body_bytes)
        if not body.model_fields_set:
            raise field_error("(body)", "name, max_users or admin_email is required")
        changes = TenantChanges(
            name=body.name,
            admin_email=body.admin_email,
            max_users=body.max_users,
            clear_max_users="max_users" in body.model_fields_set and body.max_users is None,
        )
        for field in ("name", "admin_email"):
            if field in body.model_fields_set and getattr(body, field) is None:
                raise field_error(field, "may not be null")
        updated = await self.services.directory.update_tenant(
            tenant.id,
            changes,
            self._tenant_plan(tenant),
            self._now(),
            audit=self._entry(request, caller, tenant.id, "tenant.update", tenant.id),
        )
        if updated is None:
            raise problems.not_found()
        await self._changed(tenant.id)
        return JSONResponse(updated.to_json())

    async def delete_tenant(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        entry = self._entry(request, caller, tenant.id, "tenant.delete", tenant.id)
        if not await self.services.directory.delete_tenant(tenant.id, self._now(), audit=entry):
            raise problems.not_found()
        await self._changed(tenant.id)
        return Response(status_code=204)

    async def _set_status(self, request: Request, status: TenantStatus) -> Response:
        tenant_id = request.path_params["tenant_id"]
        caller = await self._caller(request)
        require_operator(caller, tenant_id)
        tenant_id = path_id(request, "tenant_id")
        action = "tenant.suspend" if status is TenantStatus.SUSPENDED else "tenant.resume"
        entry = self._entry(request, caller, tenant_id, action, tenant_id)
        tenant = await self.services.directory.set_status(tenant_id, status, audit=entry)
        if tenant is None:
            raise problems.not_found()
        await self._changed(tenant_id)
        return JSONResponse(tenant.to_json())

    async def suspend(self, request: Request) -> Response:
        return await self._set_status(request, TenantStatus.SUSPENDED)

    async def resume(self, request: Request) -> Response:
        return await self._set_status(request, TenantStatus.ACTIVE)

    async def change_plan(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.CHANGE_PLAN)
        limiter = self.services.plan_change_limiter  # each change is a transaction: not in a loop
        if limiter is not None and not caller.is_operator:
            # Every attempt counts, valid or not, before anything is read or written.
            wait = limiter.over(tenant.id) or await limiter.hit(tenant.id)
            if wait:
                raise problems.too_many_changes("plan", wait)
        body = await parse_body(request, ChangePlanRequest, self.settings.admin_max_body_bytes)
        plan = self._plan(body.plan)
        at = self._now()
        # The calls made so far stay on the old plan's terms: their count is stored with the
        # change, in its transaction. Read even for the same plan: another change may be
        # stored first, and then this one is a real change too.
        calls_before = await self.services.billing.calls_before(tenant.id, at)
        entry = self._entry(
            request, caller, tenant.id, "tenant.plan", f"{tenant.plan} -> {plan.name}"
        )
        updated = await self.services.directory.change_plan(
            tenant.id, plan, at, calls_before=calls_before, audit=entry
        )
        if updated is None:
            raise problems.not_found()
        await self._changed(tenant.id)
        return JSONResponse(updated.to_json())

    async def get_webhook(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_TENANT)
        target = await self.services.directory.webhook_target(tenant.id)
        return JSONResponse({"url": target[0] if target else None})

    async def webhook_deliveries(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_TENANT)
        events = await self.services.ledger.recent_events(tenant.id)
        return JSONResponse({"deliveries": [event.to_json() for event in events]})

    async def set_webhook(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        changes = self.services.events.changes  # each setting resolves a name: not in a loop
        if changes is not None and not caller.is_operator:
            wait = changes.take(tenant.id)
            if wait:
                raise problems.too_many_changes("webhook", wait)
        body = await parse_body(request, WebhookRequest, self.settings.admin_max_body_bytes)
        refused = await self.services.events.policy.refusal_of(body.url, tenant.id)
        if refused is not None:
            raise field_error("url", refused, "The webhook URL is not allowed.")
        secret = new_webhook_secret()
        entry = self._entry(request, caller, tenant.id, "webhook.set", body.url)
        if not await self.services.directory.set_webhook(tenant.id, body.url, secret, audit=entry):
            raise problems.not_found()
        return JSONResponse({"url": body.url, "secret": secret})

    async def delete_webhook(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        entry = self._entry(request, caller, tenant.id, "webhook.delete")
        await self.services.directory.set_webhook(tenant.id, None, None, audit=entry)
        return Response(status_code=204)
