"""A tenant's view: usage against the quota, the burn-down chart, refused calls, top routes,
invoices, keys, users, plan and webhook; and the forms that change them.

Each read and each change is one admin API call (``calls.py``) for the signed-in caller, so a
viewer's session shows what a viewer key may read and its forms are refused as the API refuses
them. A change answers with a redirect back to the page (or, for a new secret, a page that
shows it this once).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenant_gateway.console.base import ConsoleHandlers, PageError, Visitor
from tenant_gateway.console.chart import burn_down
from tenant_gateway.console.proration import preview_plan_change
from tenant_gateway.models import Action, Role

__all__ = ["DONE", "TenantPages"]

DONE = {
    "key_revoked": "The key is revoked.",
    "user_added": "The user is added.",
    "user_changed": "The user's role is changed.",
    "user_removed": "The user is removed.",
    "plan_changed": "The plan is changed.",
    "webhook_removed": "The webhook is removed.",
    "suspended": "The tenant is suspended.",
    "resumed": "The tenant is resumed.",
}
"""The notices a redirect may ask for (by code: no text travels in the URL)."""
_TOP_ROUTES = 10
_ROLES = [role.value for role in Role]


def _number(raw: str | None) -> int | str | None:
    """A form's number as an int, or the text as typed, for the admin API to refuse."""
    if raw is None or raw == "":
        return None
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 12 else raw


class TenantPages(ConsoleHandlers):
    def routes(self, t: str) -> list[Route]:
        return [
            Route(t, self.view, methods=["GET"]),
            Route(t + "/invoices/{period}", self.invoice, methods=["GET"]),
            Route(t + "/keys", self.create_key, methods=["POST"]),
            Route(t + "/keys/{key_id}/revoke", self.revoke_key, methods=["POST"]),
            Route(t + "/keys/{key_id}/rotate", self.rotate_key, methods=["POST"]),
            Route(t + "/users", self.add_user, methods=["POST"]),
            Route(t + "/users/{user_id}/role", self.change_role, methods=["POST"]),
            Route(t + "/users/{user_id}/remove", self.remove_user, methods=["POST"]),
            Route(t + "/plan", self.preview_plan, methods=["GET"]),
            Route(t + "/plan", self.change_plan, methods=["POST"]),
            Route(t + "/webhook", self.set_webhook, methods=["POST"]),
            Route(t + "/webhook/remove", self.remove_webhook, methods=["POST"]),
        ]

    async def _get(self, request: Request, visitor: Visitor, path: str, query: str = "") -> Any:
        return await self.calls(request.scope, visitor.caller, "GET", path, query=query)

    async def view(self, request: Request) -> Response:
        visitor = await self.visitor(request)
        tenant_id = self.tenant_id(request, visitor)
        t = f"/{tenant_id}"
        tenant = await self._get(request, visitor, t)
        usage = await self._get(request, visitor, t + "/usage")
        sections: dict[str, Any] = {}
        if visitor.may(Action.READ_KEYS):
            sections["keys"] = await self._get(request, visitor, t + "/keys")
        if visitor.may(Action.READ_USERS):
            sections["users"] = await self._get(request, visitor, t + "/users")
        if visitor.may(Action.READ_BILLING):
            sections["draft"] = await self._get(request, visitor, t + "/billing/invoice")
            sections["issued"] = await self._get(request, visitor, t + "/billing/invoices")
        webhook = await self._get(request, visitor, t + "/webhook")
        deliveries = await self._get(request, visitor, t + "/webhook/deliveries")
        routes = sorted(usage["by_route"], key=lambda route: (-route["calls"], route["route"]))
        users, seats = usage["users"], usage["max_users"]
        return self.render(
            request,
            "tenant.html",
            visitor=visitor,
            tenant=tenant,
            usage=usage,
            chart=burn_down(usage, self.services.clock()),
            top_routes=routes[:_TOP_ROUTES],
            seats_left=None if seats is None else max(0, seats - users),
            webhook=webhook,
            deliveries=deliveries["deliveries"],
            plans=self.services.plans,
            roles=_ROLES,
            notice=DONE.get(request.query_params.get("done", "")),
            can_keys=visitor.may(Action.MANAGE_KEYS),
            can_users=visitor.may(Action.MANAGE_USERS),
            can_plan=visitor.may(Action.CHANGE_PLAN),
            can_tenant=visitor.may(Action.MANAGE_TENANT),
            **sections,
        )

    async def invoice(self, request: Request) -> Response:
        visitor = await self.visitor(request)
        tenant_id = self.tenant_id(request, visitor)
        period = request.path_params["period"]
        if not (period.isascii() and len(period) == 7):
            raise PageError(422, "validation_error", "The period must be YYYY-MM.")
        tenant = await self._get(request, visitor, f"/{tenant_id}")
        invoice = await self._get(
            request, visitor, f"/{tenant_id}/billing/invoice", f"period={period}"
        )
        return self.render(request, "invoice.html", visitor=visitor, tenant=tenant, invoice=invoice)

    async def _call(
        self,
        request: Request,
        visitor: Visitor,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
    ) -> Any:
        return await self.calls(request.scope, visitor.caller, method, path, body)

    def _back(self, request: Request, tenant_id: str, done: str, anchor: str) -> Response:
        return self.redirect(request, f"/tenants/{tenant_id}?done={done}#{anchor}")

    def _secret(
        self, request: Request, visitor: Visitor, tenant_id: str, what: str, **shown: Any
    ) -> Response:
        return self.render(
            request, "secret.html", visitor=visitor, tenant_id=tenant_id, what=what, **shown
        )

    async def create_key(self, request: Request) -> Response:
        visitor, form = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        body = {"name": form.get("name") or None, "role": form.get("role", "developer")}
        key = await self._call(request, visitor, "POST", f"/{tenant_id}/keys", body)
        return self._secret(request, visitor, tenant_id, "key", key=key)

    async def revoke_key(self, request: Request) -> Response:
        visitor, _ = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        key_id = request.path_params["key_id"]
        await self._call(request, visitor, "DELETE", f"/{tenant_id}/keys/{key_id}")
        return self._back(request, tenant_id, "key_revoked", "keys")

    async def rotate_key(self, request: Request) -> Response:
        visitor, form = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        key_id = request.path_params["key_id"]
        grace = _number(form.get("grace_seconds"))
        body = {} if grace is None else {"grace_seconds": grace}
        key = await self._call(request, visitor, "POST", f"/{tenant_id}/keys/{key_id}/rotate", body)
        return self._secret(request, visitor, tenant_id, "rotated key", key=key, grace=grace or 0)

    async def add_user(self, request: Request) -> Response:
        visitor, form = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        body = {"email": form.get("email", ""), "role": form.get("role", "")}
        await self._call(request, visitor, "POST", f"/{tenant_id}/users", body)
        return self._back(request, tenant_id, "user_added", "users")

    async def change_role(self, request: Request) -> Response:
        visitor, form = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        user_id = request.path_params["user_id"]
        body = {"role": form.get("role", "")}
        await self._call(request, visitor, "PATCH", f"/{tenant_id}/users/{user_id}", body)
        return self._back(request, tenant_id, "user_changed", "users")

    async def remove_user(self, request: Request) -> Response:
        visitor, _ = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        user_id = request.path_params["user_id"]
        await self._call(request, visitor, "DELETE", f"/{tenant_id}/users/{user_id}")
        return self._back(request, tenant_id, "user_removed", "users")

    async def preview_plan(self, request: Request) -> Response:
        """What the change would do to this month's invoice, and the form that confirms it."""
        visitor = await self.visitor(request)
        tenant_id = self.tenant_id(request, visitor)
        if not visitor.may(Action.CHANGE_PLAN):
            raise PageError(403, "forbidden", f"A {visitor.role} key may not change the plan.")
        plan = request.query_params.get("plan", "")
        if plan not in self.services.plans:
            raise PageError(
                422,
                "validation_error",
                f"The plan must be one of {', '.join(sorted(self.services.plans))}.",
                [{"field": "plan", "message": "unknown plan"}],
            )
        tenant = await self.services.directory.get_tenant(tenant_id)
        if tenant is None:
            raise PageError(404, "not_found", "No such tenant.")
        before, after = await preview_plan_change(self.services, tenant, plan)
        return self.render(
            request,
            "plan.html",
            visitor=visitor,
            tenant=tenant.to_json(),
            plan=self.services.plans[plan],
            current=self.services.plans.get(tenant.plan),
            before=before,
            after=after,
        )

    async def change_plan(self, request: Request) -> Response:
        visitor, form = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        body = {"plan": form.get("plan", "")}
        await self._call(request, visitor, "PUT", f"/{tenant_id}/plan", body)
        return self._back(request, tenant_id, "plan_changed", "plan")

    async def set_webhook(self, request: Request) -> Response:
        visitor, form = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        body = {"url": form.get("url", "")}
        webhook = await self._call(request, visitor, "PUT", f"/{tenant_id}/webhook", body)
        return self._secret(request, visitor, tenant_id, "webhook", webhook=webhook)

    async def remove_webhook(self, request: Request) -> Response:
        visitor, _ = await self.change(request)
        tenant_id = self.tenant_id(request, visitor)
        await self._call(request, visitor, "DELETE", f"/{tenant_id}/webhook")
        return self._back(request, tenant_id, "webhook_removed", "webhook")
