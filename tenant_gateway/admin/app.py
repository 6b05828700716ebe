"""The admin sub-app mounted at ``/api/v1/tenants`` (SPEC §6).

Admin calls are authenticated here (operator JWT or the tenant's own key), are not metered,
and every change is written to the tenant's audit log by the directory, in the same transaction
as the change. Path ids that cannot name anything (``keys.is_id``) are 404 without a query.

This module assembles the app: the route table over the handler groups (``tenants``, ``users``,
``api_keys``, ``reports``, ``transfers``, all ``base.AdminHandlers``), the request deadline
(``deadline``) and the one mapping of errors to problem+json.
"""

from __future__ import annotations

from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.admin.api_keys import KeyHandlers
from tenant_gateway.admin.auth import OperatorAuth
from tenant_gateway.admin.deadline import Deadline, TenantAdmission
from tenant_gateway.admin.reports import ReportHandlers
from tenant_gateway.admin.tenants import TenantHandlers
from tenant_gateway.admin.transfers import TransferHandlers
from tenant_gateway.admin.users import UserHandlers
from tenant_gateway.exceptions import Problem, Refusal, StoreBusy, StoreUnavailable
from tenant_gateway.services import Services

__all__ = ["build_admin_app"]


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Problem):
        return problems.problem_response(exc)
    if isinstance(exc, Refusal):
        return problems.problem_response(problems.for_refusal(exc))
    if isinstance(exc, StoreBusy):
        return problems.problem_response(problems.lock_timeout())
    if isinstance(exc, StoreUnavailable):
        return problems.problem_response(problems.service_unavailable(str(exc)))
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            problem = problems.method_not_allowed(_allowed_methods(request))
        else:
            problem = problems.not_found()
        return problems.problem_response(problem)
    return problems.problem_response(
        Problem(500, "internal_error", "Internal error", "An unexpected error occurred.")
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path. Each method has its own route here, so the
    router's own ``Allow`` names only the first route that matched the path. The scope is the
    one the innermost router matched against (its ``root_path`` past the mount), so the routes
    are matched against it as they are, wherever they are mounted."""
    methods = {
        method
        for route in _routes(request.app.router.routes)
        if route.matches(request.scope)[0] is not Match.NONE
        for method in route.methods or ()
    }
    return ", ".join(sorted(methods))


def _routes(routes: list[BaseRoute]) -> Iterator[Route]:
    for route in routes:
        if isinstance(route, Route):
            yield route
        elif isinstance(route, Mount):
            yield from _routes(route.routes)


def build_admin_app(services: Services, operators: OperatorAuth | None = None) -> Starlette:
    """The admin API over ``services`` (its settings: prefix, deadline, per-tenant admission);
    ``operators``: how operator tokens are verified (None: no operator access)."""
    settings = services.settings
    shared = (services, operators, TenantAdmission(settings.admin_tenant_concurrency))
    tenants, users, keys = TenantHandlers(*shared), UserHandlers(*shared), KeyHandlers(*shared)
    reports, transfers = ReportHandlers(*shared), TransferHandlers(*shared)
    tenant = "/{tenant_id}"
    user = tenant + "/users/{user_id}"
    key = tenant + "/keys/{key_id}"
    routes: list[BaseRoute] = [
        Route("/openapi.json", reports.openapi, methods=["GET"]),
        Route("/register", tenants.register, methods=["POST"]),
        Route("/", tenants.list_tenants, methods=["GET"]),
        Route(tenant, tenants.get_tenant, methods=["GET"]),
        Route(tenant, tenants.update_tenant, methods=["PATCH"]),
        Route(tenant, tenants.delete_tenant, methods=["DELETE"]),
        Route(tenant + "/suspend", tenants.suspend, methods=["POST"]),
        Route(tenant + "/resume", tenants.resume, methods=["POST"]),
        Route(tenant + "/plan", tenants.change_plan, methods=["PUT"]),
        Route(tenant + "/users", users.add_user, methods=["POST"]),
        Route(tenant + "/users", users.list_users, methods=["GET"]),
        Route(user, users.get_user, methods=["GET"]),
        Route(user, users.update_user, methods=["PATCH"]),
        Route(user, users.delete_user, methods=["DELETE"]),
        Route(tenant + "/keys", keys.create_key, methods=["POST"]),
        Route(tenant + "/keys", keys.list_keys, methods=["GET"]),
        Route(key, keys.revoke_key, methods=["DELETE"]),
        Route(key + "/rotate", keys.rotate_key, methods=["POST"]),
        Route(tenant + "/usage", reports.usage, methods=["GET"]),
        Route(tenant + "/usage.csv", reports.usage_csv, methods=["GET"]),
        Route(tenant + "/audit", reports.audit, methods=["GET"]),
        Route(tenant + "/export", transfers.export, methods=["GET"]),
        Route(tenant + "/import", transfers.import_, methods=["POST"]),
        Route(tenant + "/billing/invoice", reports.invoice, methods=["GET"]),
        Route(tenant + "/billing/invoices", reports.invoices, methods=["GET"]),
        Route(tenant + "/webhook", tenants.get_webhook, methods=["GET"]),
        Route(tenant + "/webhook", tenants.set_webhook, methods=["PUT"]),
        Route(tenant + "/webhook", tenants.delete_webhook, methods=["DELETE"]),
        Route(tenant + "/webhook/deliveries", tenants.webhook_deliveries, methods=["GET"]),
    ]
    if settings.console_path is not None:  # first: "/console" is no tenant id
        # imported here: the console imports the admin API's modules (``admin.auth``)
        from tenant_gateway.console.app import build_console

        async def admin(scope: Scope, receive: Receive, send: Send) -> None:
            await app(scope, receive, send)  # the console calls the admin API in process

        routes.insert(
            0, Mount(settings.console_path, app=build_console(services, operators, admin))
        )
    app = Starlette(
        routes=[Mount(settings.admin_prefix, routes=routes)],
        middleware=[Middleware(Deadline, timeout=settings.admin_timeout)],
        exception_handlers={
            Problem: _problem_handler,
            Refusal: _problem_handler,
            StoreUnavailable: _problem_handler,
            HTTPException: _problem_handler,
            Exception: _problem_handler,
        },
    )
    return app
