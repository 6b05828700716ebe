"""The admin sub-app mounted at ``/api/v1/tenants`` (SPEC §6).

Admin calls are authenticated here (operator JWT or the tenant's own key) and are not metered.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tenant_gateway import problems
from tenant_gateway.admin.auth import Action, authenticate, authorize, require_operator
from tenant_gateway.admin.openapi import openapi_document
from tenant_gateway.admin.schemas import (
    AddUserRequest,
    ChangePlanRequest,
    RegisterRequest,
    parse_body,
)
from tenant_gateway.clock import Period
from tenant_gateway.exceptions import Problem, StoreUnavailable
from tenant_gateway.keys import generate_api_key, hash_api_key, key_display_prefix, new_id
from tenant_gateway.models import (
    ApiKeyRecord,
    Role,
    Tenant,
    TenantStatus,
    User,
    effective_seat_limit,
)
from tenant_gateway.plans import Plan
from tenant_gateway.services import Services
from tenant_gateway.usage import usage_report

__all__ = ["build_admin_app"]

_PAGE_DEFAULT = 50
_PAGE_MAX = 500


def _plan_error(name: str, services: Services) -> Problem:
    return problems.validation_error(
        "Unknown plan.",
        [{"field": "plan", "message": f"must be one of {', '.join(sorted(services.plans))}"}],
    )


def _query_error(field: str, message: str) -> Problem:
    return problems.validation_error(
        "Invalid query parameter.", [{"field": field, "message": message}]
    )


class AdminAPI:
    def __init__(self, services: Services) -> None:
        self.s = services

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.s.clock(), UTC)

    async def _tenant(self, request: Request, action: Action) -> Tenant:
        tenant_id = request.path_params["tenant_id"]
        caller = await authenticate(request, self.s)
        authorize(caller, tenant_id, action)
        tenant = await self.s.directory.get_tenant(tenant_id)
        if tenant is None:
            raise problems.not_found()
        return tenant

    def _plan(self, name: str) -> Plan:
        plan = self.s.plans.get(name)
        if plan is None:
            raise _plan_error(name, self.s)
        return plan

    async def register(self, request: Request) -> Response:
        caller = await authenticate(request, self.s, required=not self.s.allow_signup)
        if not self.s.allow_signup:
            require_operator(caller)
        body = await parse_body(request, RegisterRequest, self.s.max_body_bytes)
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
        secret = generate_api_key()
        key = ApiKeyRecord(
            id=new_id("key"),
            tenant_id=tenant.id,
            key_hash=hash_api_key(secret),
            prefix=key_display_prefix(secret),
            name="registration",
            role=Role.ADMIN,
            created_at=now,
            expires_at=None,
        )
        await self.s.directory.register(tenant, admin, key)
        return JSONResponse({**tenant.to_json(), "api_key": secret}, status_code=201)

    async def list_tenants(self, request: Request) -> Response:
        require_operator(await authenticate(request, self.s))
        raw_limit = request.query_params.get("limit", str(_PAGE_DEFAULT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _PAGE_MAX:
            raise _query_error("limit", f"must be an integer from 1 to {_PAGE_MAX}")
        limit = int(raw_limit)
        after = request.query_params.get("after") or None
        tenants = await self.s.directory.list_tenants(limit=limit + 1, after=after)
        page = tenants[:limit]
        return JSONResponse(
            {
                "items": [tenant.to_json() for tenant in page],
                "next_after": page[-1].id if len(tenants) > limit else None,
            }
        )

    async def get_tenant(self, request: Request) -> Response:
        return JSONResponse((await self._tenant(request, Action.READ_TENANT)).to_json())

    async def _set_status(self, request: Request, status: TenantStatus) -> Response:
        tenant_id = request.path_params["tenant_id"]
        require_operator(await authenticate(request, self.s), tenant_id)
        tenant = await self.s.directory.set_status(tenant_id, status)
        if tenant is None:
            raise problems.not_found()
        self.s.resolver.forget_tenant(tenant_id)
        return JSONResponse(tenant.to_json())

    async def suspend(self, request: Request) -> Response:
        return await self._set_status(request, TenantStatus.SUSPENDED)

    async def resume(self, request: Request) -> Response:
        return await self._set_status(request, TenantStatus.ACTIVE)

    async def add_user(self, request: Request) -> Response:
        tenant = await self._tenant(request, Action.MANAGE_USERS)
        body = await parse_body(request, AddUserRequest, self.s.max_body_bytes)
        seat_limit = effective_seat_limit(self._plan(tenant.plan), tenant)
        user = User(new_id("usr"), tenant.id, body.email, body.role, self._now())
        await self.s.directory.add_user(user, seat_limit)
        return JSONResponse(user.to_json(), status_code=201)

    async def list_users(self, request: Request) -> Response:
        tenant = await self._tenant(request, Action.READ_USERS)
        users = await self.s.directory.list_users(tenant.id)
        return JSONResponse([user.to_json() for user in users])

    async def usage(self, request: Request) -> Response:
        tenant = await self._tenant(request, Action.READ_USAGE)
        current = Period.containing(self.s.clock())
        raw_period = request.query_params.get("period")
        try:
            period = current if raw_period is None else Period.parse(raw_period)
        except ValueError:
            raise _query_error("period", "must be YYYY-MM") from None
        if period > current:
            raise _query_error("period", "must not be in the future")
        if period == current:
            await (
                self.s.recorder.flush()
            )  # this process's pending route tallies, so reads are exact
        plan = self._plan(tenant.plan)
        tallies = await self.s.counters.read((tenant.id, str(period)))
        report = usage_report(
            tenant_id=tenant.id,
            period=period,
            tallies=tallies,
            limit=plan.monthly_calls,
            users=await self.s.directory.count_users(tenant.id),
            max_users=effective_seat_limit(plan, tenant),
        )
        return JSONResponse(report)

    async def change_plan(self, request: Request) -> Response:
        tenant = await self._tenant(request, Action.CHANGE_PLAN)
        body = await parse_body(request, ChangePlanRequest, self.s.max_body_bytes)
        plan = self._plan(body.plan)
        updated = await self.s.directory.change_plan(tenant.id, plan, self._now())
        if updated is None:
            raise problems.not_found()
        self.s.resolver.forget_tenant(tenant.id)
        return JSONResponse(updated.to_json())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(request.scope.get("root_path", "")))


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Problem):
        return problems.problem_response(exc)
    if isinstance(exc, StoreUnavailable):
        return problems.problem_response(problems.service_unavailable(str(exc)))
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            problem = Problem(405, "method_not_allowed", "Method not allowed", str(exc.detail))
        else:
            problem = problems.not_found()
        return problems.problem_response(problem)
    return problems.problem_response(
        Problem(500, "internal_error", "Internal error", "An unexpected error occurred.")
    )


def build_admin_app(services: Services, prefix: str) -> Starlette:
    api = AdminAPI(services)
    tenant = "/{tenant_id}"
    routes = [
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/register", api.register, methods=["POST"]),
        Route("/", api.list_tenants, methods=["GET"]),
        Route(tenant, api.get_tenant, methods=["GET"]),
        Route(tenant + "/suspend", api.suspend, methods=["POST"]),
        Route(tenant + "/resume", api.resume, methods=["POST"]),
        Route(tenant + "/users", api.add_user, methods=["POST"]),
        Route(tenant + "/users", api.list_users, methods=["GET"]),
        Route(tenant + "/usage", api.usage, methods=["GET"]),
        Route(tenant + "/plan", api.change_plan, methods=["PUT"]),
    ]
    return Starlette(
        routes=[Mount(prefix, routes=routes)],
        exception_handlers={
            Problem: _problem_handler,
            StoreUnavailable: _problem_handler,
            HTTPException: _problem_handler,
            Exception: _problem_handler,
        },
    )
