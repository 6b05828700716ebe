"""Admin handlers for a tenant's users (seats)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tenant_gateway import problems
from tenant_gateway.admin.base import AdminHandlers, path_id
from tenant_gateway.admin.schemas import AddUserRequest, UpdateUserRequest
from tenant_gateway.bodies import parse_body
from tenant_gateway.keys import new_id
from tenant_gateway.models import Action, User, effective_seat_limit

__all__ = ["UserHandlers"]


class UserHandlers(AdminHandlers):
    """Add, list, read, change and remove a tenant's users."""

    async def add_user(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_USERS)
        body = await parse_body(request, AddUserRequest, self.settings.admin_max_body_bytes)
        seat_limit = effective_seat_limit(self._tenant_plan(tenant), tenant)
        user = User(new_id("usr"), tenant.id, body.email, body.role, self._now())
        await self.services.directory.add_user(
            user, seat_limit, audit=self._entry(request, caller, tenant.id, "user.create", user.id)
        )
        return JSONResponse(user.to_json(), status_code=201)

    async def list_users(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_USERS)
        users = await self.services.directory.list_users(tenant.id)
        return JSONResponse([user.to_json() for user in users])

    async def get_user(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_USERS)
        user = await self.services.directory.get_user(tenant.id, path_id(request, "user_id"))
        if user is None:
            raise problems.not_found()
        return JSONResponse(user.to_json())

    async def update_user(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_USERS)
        body = await parse_body(request, UpdateUserRequest, self.settings.admin_max_body_bytes)
        user_id = path_id(request, "user_id")
        entry = self._entry(request, caller, tenant.id, "user.update", user_id)
        user = await self.services.directory.update_user(tenant.id, user_id, body.role, audit=entry)
        if user is None:
            raise problems.not_found()
        return JSONResponse(user.to_json())

    async def delete_user(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_USERS)
        user_id = path_id(request, "user_id")
        entry = self._entry(request, caller, tenant.id, "user.delete", user_id)
        if not await self.services.directory.delete_user(tenant.id, user_id, audit=entry):
            raise problems.not_found()
        return Response(status_code=204)
