"""The admin sub-app's OpenAPI 3.1 document, built from the request models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from tenant_gateway.admin.schemas import AddUserRequest, ChangePlanRequest, RegisterRequest

__all__ = ["openapi_document"]

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_TENANT_ID = {"name": "tenant_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }


def _responses(success: str, description: str, *errors: int) -> dict[str, Any]:
    answers: dict[str, Any] = {success: {"description": description}}
    if success != "204":
        answers[success]["content"] = {"application/json": {"schema": {"type": "object"}}}
    for status in errors:
        answers[str(status)] = {
            "description": "problem",
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
    return answers


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


_AUTH = (401, 403, 404, 503)


@cache
def _paths() -> dict[str, Any]:
    on_tenant = {"parameters": [_TENANT_ID]}
    return {
        "/register": {
            "post": _operation(
                "Register a tenant; answers its first API key (shown once)",
                _responses("201", "the tenant and its api_key", 400, 401, 403, 413, 422),
                requestBody=_body(RegisterRequest),
            )
        },
        "/": {
            "get": _operation(
                "List tenants (operator)",
                _responses("200", "a page of tenants", 401, 403, 422),
                parameters=[
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
            )
        },
        "/{tenant_id}": {
            **on_tenant,
            "get": _operation("Get a tenant", _responses("200", "tenant", *_AUTH)),
        },
        "/{tenant_id}/suspend": {
            **on_tenant,
            "post": _operation("Suspend a tenant (operator)", _responses("200", "tenant", *_AUTH)),
        },
        "/{tenant_id}/resume": {
            **on_tenant,
            "post": _operation("Resume a tenant (operator)", _responses("200", "tenant", *_AUTH)),
        },
        "/{tenant_id}/users": {
            **on_tenant,
            "get": _operation("List users", _responses("200", "users", *_AUTH)),
            "post": _operation(
                "Add a user (seat-limited)",
                _responses("201", "the user", 400, 409, 413, 422, *_AUTH),
                requestBody=_body(AddUserRequest),
            ),
        },
        "/{tenant_id}/usage": {
            **on_tenant,
            "get": _operation(
                "Usage for a calendar month",
                _responses("200", "usage report", 422, *_AUTH),
                parameters=[
                    {
                        "name": "period",
                        "in": "query",
                        "schema": {"type": "string", "pattern": r"^\d{4}-\d{2}$"},
                    }
                ],
            ),
        },
        "/{tenant_id}/plan": {
            **on_tenant,
            "put": _operation(
                "Change plan",
                _responses("200", "tenant", 400, 409, 413, 422, *_AUTH),
                requestBody=_body(ChangePlanRequest),
            ),
        },
    }


def openapi_document(root_path: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        model.__name__: model.model_json_schema()
        for model in (RegisterRequest, AddUserRequest, ChangePlanRequest)
    }
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
