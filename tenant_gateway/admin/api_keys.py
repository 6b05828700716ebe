"""Admin handlers for a tenant's API keys."""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tenant_gateway import problems
from tenant_gateway.admin.base import AdminHandlers, field_error, path_id
from tenant_gateway.admin.schemas import CreateKeyRequest, RotateKeyRequest
from tenant_gateway.bodies import parse_body
from tenant_gateway.clock import format_timestamp
from tenant_gateway.models import Action

__all__ = ["KeyHandlers"]


class KeyHandlers(AdminHandlers):
    """Create, list, revoke and rotate a tenant's API keys."""

    async def create_key(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_KEYS)
        body = await parse_body(request, CreateKeyRequest, self.settings.admin_max_body_bytes)
        if body.expires_at is not None and body.expires_at <= self._now():
            raise field_error("expires_at", "must be in the future")
        secret, key = self._mint(tenant.id, body.name, body.role, body.expires_at)
        await self.services.directory.create_key(
            key, audit=self._entry(request, caller, tenant.id, "key.create", key.id)
        )
        return JSONResponse({**key.to_json(), "api_key": secret}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_KEYS)
        keys = []
        for key in await self.services.directory.list_keys(tenant.id):
            described = key.to_json()
            pending = self.services.resolver.last_used(tenant.id, key.id)
            if pending is not None and (key.last_used_at is None or pending > key.last_used_at):
                described["last_used_at"] = format_timestamp(pending)
            keys.append(described)
        return JSONResponse(keys)

    async def revoke_key(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_KEYS)
        key_id = path_id(request, "key_id")
        entry = self._entry(request, caller, tenant.id, "key.revoke", key_id)
        if not await self.services.directory.revoke_key(
            tenant.id, key_id, self._now(), audit=entry
        ):
            raise problems.not_found()
        await self._changed(tenant.id)
        return Response(status_code=204)

    async def rotate_key(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_KEYS)
        body = await parse_body(
            request, RotateKeyRequest, self.settings.admin_max_body_bytes, allow_empty=True
        )
        key_id = path_id(request, "key_id")
        old = next(
            (k for k in await self.services.directory.list_keys(tenant.id) if k.id == key_id), None
        )
        if old is None:
            raise problems.not_found()
        secret, key = self._mint(tenant.id, old.name, old.role, old.expires_at)
        until = key.created_at + timedelta(seconds=body.grace_seconds)
        entry = self._entry(request, caller, tenant.id, "key.rotate", f"{key_id} -> {key.id}")
        if not await self.services.directory.rotate_key(tenant.id, key_id, key, until, audit=entry):
            raise problems.not_found("The key does not exist or is no longer active.")
        await self._changed(tenant.id)
        return JSONResponse({**key.to_json(), "api_key": secret}, status_code=201)
