"""The admin sub-app's OpenAPI 3.1 document, built from the request models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from tenant_gateway.admin.schemas import (
    AddUserRequest,
    ChangePlanRequest,
    CreateKeyRequest,
    RegisterRequest,
    RotateKeyRequest,
    UpdateTenantRequest,
    UpdateUserRequest,
    WebhookRequest,
)

__all__ = ["openapi_document"]

_MODELS: tuple[type[BaseModel], ...] = (
    RegisterRequest,
    UpdateTenantRequest,
    AddUserRequest,
    UpdateUserRequest,
    CreateKeyRequest,
    RotateKeyRequest,
    ChangePlanRequest,
    WebhookRequest,
)
_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_AUTH_ERRORS = (401, 403, 404, 429, 503)  # 429: the per-address limits
_BODY_ERRORS = (400, 413, 422)


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _operation(
    summary: str,
    success: int,
    *errors: int,
    body: type[BaseModel] | None = None,
    query: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {str(success): {"description": summary}}
    if success != 204:
        responses[str(success)]["content"] = {"application/json": {"schema": {"type": "object"}}}
    for status in sorted(set(errors + _AUTH_ERRORS + (_BODY_ERRORS if body else ()))):
        responses[str(status)] = {
            "description": "problem",
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = {
            "required": body is not RotateKeyRequest,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
            },
        }
    if query:
        operation["parameters"] = query
    return operation


def _on(*names: str, **operations: dict[str, Any]) -> dict[str, Any]:
    for method, operation in operations.items():
        if method != "get":  # a change waits at most a second for a row lock: 409 lock_timeout
            operation["responses"].setdefault(
                "409",
                {
                    "description": "problem",
                    "content": {"application/problem+json": {"schema": _PROBLEM}},
                },
            )
    return {"parameters": [_path_parameter(name) for name in names], **operations}


_PAGE = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 500})]


@cache
def _paths() -> dict[str, Any]:
    t, u, k = "tenant_id", "user_id", "key_id"
    return {
        "/register": {
            "post": _operation(
                "Register a tenant; answers its first API key, once", 201, body=RegisterRequest
            )
        },
        "/": {
            "get": _operation(
                "List tenants (operator)",
                200,
                422,
                query=[*_PAGE, _query("after", {"type": "string"})],
            )
        },
        "/{tenant_id}": _on(
            t,
            get=_operation("Get a tenant", 200),
            patch=_operation(
                "Update name, max_users, admin_email", 200, 409, body=UpdateTenantRequest
            ),
            delete=_operation("Delete a tenant: keys stop at once, data purged", 204),
        ),
        "/{tenant_id}/suspend": _on(t, post=_operation("Suspend a tenant (operator)", 200)),
        "/{tenant_id}/resume": _on(t, post=_operation("Resume a tenant (operator)", 200)),
        "/{tenant_id}/plan": _on(
            t,
            put=_operation(
                "Change plan (429 rate_limited past the per-tenant limit, 10 an hour by default;"
                " operators are not limited)",
                200,
                409,
                429,
                body=ChangePlanRequest,
            ),
        ),
        "/{tenant_id}/users": _on(
            t,
            get=_operation("List users", 200),
            post=_operation("Add a user (seat-limited)", 201, 409, body=AddUserRequest),
        ),
        "/{tenant_id}/users/{user_id}": _on(
            t,
            u,
            get=_operation("Get a user", 200),
            patch=_operation("Change a user's role", 200, body=UpdateUserRequest),
            delete=_operation("Remove a user", 204),
        ),
        "/{tenant_id}/keys": _on(
            t,
            get=_operation("List keys (metadata only)", 200),
            post=_operation("Create a key; answers the secret, once", 201, body=CreateKeyRequest),
        ),
        "/{tenant_id}/keys/{key_id}": _on(t, k, delete=_operation("Revoke a key", 204)),
        "/{tenant_id}/keys/{key_id}/rotate": _on(
            t, k, post=_operation("Rotate a key with a grace period", 201, body=RotateKeyRequest)
        ),
        "/{tenant_id}/usage": _on(
            t,
            get=_operation(
                "Usage for a calendar month (JSON, or CSV with format=csv / Accept: text/csv)",
                200,
                422,
                query=[
                    _query("period", {"type": "string", "pattern": r"^\d{4}-\d{2}$"}),
                    _query("format", {"type": "string", "enum": ["json", "csv"]}),
                ],
            ),
        ),
        "/{tenant_id}/export": _on(
            t, get=_operation("Every tenant-scoped row as application/x-ndjson", 200, 429, 501)
        ),
        "/{tenant_id}/import": _on(
            t,
            post=_operation(
                "Load an export into this tenant, all or nothing",
                200,
                408,
                413,
                422,
                429,
                501,
                query=[
                    _query("dry_run", {"type": "boolean"}),
                    _query("app_only", {"type": "boolean"}),
                ],
            ),
        ),
        "/{tenant_id}/billing/invoice": _on(
            t,
            get=_operation(
                "The invoice of a month: a draft while it is open, issued after",
                200,
                422,
                query=[_query("period", {"type": "string", "pattern": r"^\d{4}-\d{2}$"})],
            ),
        ),
        "/{tenant_id}/billing/invoices": _on(
            t, get=_operation("Issued invoices, newest first", 200)
        ),
        "/{tenant_id}/webhook": _on(
            t,
            get=_operation("The quota-event webhook URL", 200),
            put=_operation(
                "Set the webhook; answers its signing secret, once", 200, body=WebhookRequest
            ),
            delete=_operation("Remove the webhook", 204),
        ),
        "/{tenant_id}/audit": _on(
            t,
            get=_operation(
                "Audit log, newest first",
                200,
                422,
                query=[*_PAGE, _query("before", {"type": "integer"})],
            ),
        ),
    }


def openapi_document(root_path: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in _MODELS:  # nested definitions (e.g. Role) become components of their own
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Problem"] = {
        "type": "object",
        "required": ["type", "title", "status", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tenant_gateway admin API", "version": "1"},
        "servers": [{"url": root_path or "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
