"""The admin sub-app's OpenAPI 3.1 document: the operations (``operations.py``) over the JSON
Schemas of the request models (``schemas``) and the answer models (``responses``), so a client
generated from it has typed requests and answers.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tenant_gateway.admin import responses
from tenant_gateway.admin.operations import paths
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

_REQUESTS: tuple[type[BaseModel], ...] = (
    RegisterRequest,
    UpdateTenantRequest,
    AddUserRequest,
    UpdateUserRequest,
    CreateKeyRequest,
    RotateKeyRequest,
    ChangePlanRequest,
    WebhookRequest,
)
_ANSWERS: tuple[type[BaseModel], ...] = tuple(getattr(responses, n) for n in responses.__all__)
_Mode = Literal["validation", "serialization"]
_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A tenant's own key (tk_…), or an operator's JWT (HS256, role: operator)",
    },
    "api_key": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same credentials, in their own header",
    },
}
_TAGS = {
    "tenants": "Sign-up, the tenant, its status and plan",
    "users": "A tenant's users (seats)",
    "keys": "A tenant's API keys",
    "usage": "Calls counted this month or any past one",
    "billing": "Invoices",
    "transfers": "Export and import of a tenant's rows",
    "webhook": "Where quota events are sent",
    "audit": "Who changed what",
}


@cache
def _schemas() -> dict[str, Any]:
    """Every model's JSON Schema as a component; nested definitions (Role, UsageDay…) become
    components of their own. Requests as they are validated, answers as they are written."""
    models: list[tuple[type[BaseModel], _Mode]] = [(model, "validation") for model in _REQUESTS]
    models += [(model, "serialization") for model in _ANSWERS]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def openapi_document(root_path: str, *, signup_open: bool = True) -> dict[str, Any]:
    """The document as served under ``root_path``; ``signup_open``: whether ``/register``
    takes anonymous callers (``allow_signup``)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tenant_gateway admin API",
            "version": "1",
            "description": "Tenants, users, keys, usage, billing and transfers. Errors are"
            " application/problem+json (RFC 9457) with a stable `code`.",
        },
        "servers": [{"url": root_path or "/"}],
        "tags": [{"name": name, "description": text} for name, text in _TAGS.items()],
        "components": {"schemas": _schemas(), "securitySchemes": _SECURITY_SCHEMES},
        "paths": paths(signup_open),
    }
