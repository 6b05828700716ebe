"""The admin API's operations, as the OpenAPI document states them (``openapi.py`` assembles
the document): per path and method, a stable snake_case ``operationId`` (a generated client's
function name), a tag (its module), the request body, the query parameters, the answers by
status and media type, and who may call.

Security: ``/register`` takes no credential while sign-up is open (an operator's token is still
honoured, and lifts the sign-up limits), an operator's otherwise; every other operation takes a
tenant key or an operator token, as ``Authorization: Bearer`` (``bearer``) or ``X-API-Key``
(``api_key``).
"""

from __future__ import annotations

from functools import cache
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

from tenant_gateway.admin import responses
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

__all__ = ["paths"]

Security = list[dict[str, list[str]]]

_AUTH_ERRORS = (400, 401, 403, 404, 429, 503)  # 400: two credentials that differ; 429: limits
_BODY_ERRORS = (400, 413, 422)
_CREDENTIAL: Security = [{"bearer": []}, {"api_key": []}]
_OPERATOR: Security = [{"bearer": []}]
_ANYONE: Security = []  # not [{}, bearer]: a generated client then demands a token to sign up
_NDJSON = {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}}
_CSV = {"text/csv": {"schema": {"type": "string"}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(model: type[BaseModel], *, many: bool = False) -> dict[str, Any]:
    schema = _ref(model.__name__)
    return {"application/json": {"schema": {"type": "array", "items": schema} if many else schema}}


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": HTTPStatus(status).phrase,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    success: int,
    answer: dict[str, Any] | None,
    *errors: int,
    body: type[BaseModel] | dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
    security: Security = _CREDENTIAL,
) -> dict[str, Any]:
    """``answer``: the success's content by media type (None: no content, a 204)."""
    answers: dict[str, Any] = {str(success): {"description": summary}}
    if answer is not None:
        answers[str(success)]["content"] = answer
    declared = errors + _AUTH_ERRORS + (_BODY_ERRORS if body is not None else ())
    for status in sorted(set(declared)):
        answers[str(status)] = _problem(status)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": security,
        "responses": answers,
    }
    if isinstance(body, dict):
        operation["requestBody"] = {"required": True, "content": body}
    elif body is not None:
        operation["requestBody"] = {
            "required": body is not RotateKeyRequest,
            "content": {"application/json": {"schema": _ref(body.__name__)}},
        }
    if query:
        operation["parameters"] = query
    return operation


def _on(*names: str, **operations: dict[str, Any]) -> dict[str, Any]:
    for method, operation in operations.items():
        if method != "get":  # a change waits at most a second for a row lock: 409 lock_timeout
            operation["responses"].setdefault("409", _problem(409))
    return {"parameters": [_path_parameter(name) for name in names], **operations}


_MONTH = {"type": "string", "pattern": r"^\d{4}-\d{2}$"}
_PERIOD = _query("period", _MONTH, "YYYY-MM; default: the current month")
_PAGE = _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size (50)")


@cache
def paths(signup_open: bool) -> dict[str, Any]:
    t, u, k = "tenant_id", "user_id", "key_id"
    r = responses
    return {
        "/register": {
            "post": _operation(
                "register_tenant",
                "tenants",
                "Register a tenant; answers its first API key, once",
                201,
                _json(r.RegisteredTenant),
                body=RegisterRequest,
                security=_ANYONE if signup_open else _OPERATOR,
            )
        },
        "/": {
            "get": _operation(
                "list_tenants",
                "tenants",
                "List tenants (operator)",
                200,
                _json(r.TenantPage),
                422,
                query=[_PAGE, _query("after", {"type": "string"}, "next_after of the last page")],
            )
        },
        "/{tenant_id}": _on(
            t,
            get=_operation("get_tenant", "tenants", "Get a tenant", 200, _json(r.Tenant)),
            patch=_operation(
                "update_tenant",
                "tenants",
                "Update name, max_users, admin_email",
                200,
                _json(r.Tenant),
                409,
                body=UpdateTenantRequest,
            ),
            delete=_operation(
                "delete_tenant",
                "tenants",
                "Delete a tenant: keys stop at once, data purged",
                204,
                None,
            ),
        ),
        "/{tenant_id}/suspend": _on(
            t,
            post=_operation(
                "suspend_tenant", "tenants", "Suspend a tenant (operator)", 200, _json(r.Tenant)
            ),
        ),
        "/{tenant_id}/resume": _on(
            t,
            post=_operation(
                "resume_tenant", "tenants", "Resume a tenant (operator)", 200, _json(r.Tenant)
            ),
        ),
        "/{tenant_id}/plan": _on(
            t,
            put=_operation(
                "change_plan",
                "tenants",
                "Change plan (429 rate_limited past the per-tenant limit, 10 an hour by default;"
                " operators are not limited)",
                200,
                _json(r.Tenant),
                409,
                429,
                body=ChangePlanRequest,
            ),
        ),
        "/{tenant_id}/users": _on(
            t,
            get=_operation("list_users", "users", "List users", 200, _json(r.User, many=True)),
            post=_operation(
                "add_user",
                "users",
                "Add a user (seat-limited)",
                201,
                _json(r.User),
                409,
                body=AddUserRequest,
            ),
        ),
        "/{tenant_id}/users/{user_id}": _on(
            t,
            u,
            get=_operation("get_user", "users", "Get a user", 200, _json(r.User)),
            patch=_operation(
                "update_user",
                "users",
                "Change a user's role",
                200,
                _json(r.User),
                body=UpdateUserRequest,
            ),
            delete=_operation("delete_user", "users", "Remove a user", 204, None),
        ),
        "/{tenant_id}/keys": _on(
            t,
            get=_operation(
                "list_keys", "keys", "List keys (metadata only)", 200, _json(r.ApiKey, many=True)
            ),
            post=_operation(
                "create_key",
                "keys",
                "Create a key; answers the secret, once",
                201,
                _json(r.CreatedApiKey),
                body=CreateKeyRequest,
            ),
        ),
        "/{tenant_id}/keys/{key_id}": _on(
            t, k, delete=_operation("revoke_key", "keys", "Revoke a key", 204, None)
        ),
        "/{tenant_id}/keys/{key_id}/rotate": _on(
            t,
            k,
            post=_operation(
                "rotate_key",
                "keys",
                "Rotate a key with a grace period; answers the new secret, once",
                201,
                _json(r.CreatedApiKey),
                body=RotateKeyRequest,
            ),
        ),
        "/{tenant_id}/usage": _on(
            t,
            get=_operation(
                "get_usage",
                "usage",
                "Usage for a calendar month (JSON, or CSV with format=csv / Accept: text/csv)",
                200,
                {**_json(r.UsageReport), **_CSV},
                422,
                query=[
                    _PERIOD,
                    _query(
                        "format",
                        {"type": "string", "enum": ["json", "csv"]},
                        "csv: the same as text/csv (with a generated client: get_usage_csv)",
                    ),
                ],
            ),
        ),
        "/{tenant_id}/usage.csv": _on(
            t,
            get=_operation(
                "get_usage_csv",
                "usage",
                "Usage for a calendar month as CSV: one row per total, day, route and status",
                200,
                _CSV,
                422,
                query=[_PERIOD],
            ),
        ),
        "/{tenant_id}/export": _on(
            t,
            get=_operation(
                "export_tenant",
                "transfers",
                "Every tenant-scoped row, one JSON document a line (PostgreSQL only)",
                200,
                _NDJSON,
                429,
                501,
            ),
        ),
        "/{tenant_id}/import": _on(
            t,
            post=_operation(
                "import_tenant",
                "transfers",
                "Load an export into this tenant, all or nothing (PostgreSQL only)",
                200,
                _json(r.ImportSummary),
                408,
                413,
                422,
                429,
                501,
                body=_NDJSON,
                query=[
                    _query("dry_run", {"type": "boolean"}, "Check everything, change nothing"),
                    _query("app_only", {"type": "boolean"}, "Only the wrapped app's tables"),
                ],
            ),
        ),
        "/{tenant_id}/billing/invoice": _on(
            t,
            get=_operation(
                "get_invoice",
                "billing",
                "The invoice of a month: a draft while it is open, issued after",
                200,
                _json(r.Invoice),
                422,
                query=[_PERIOD],
            ),
        ),
        "/{tenant_id}/billing/invoices": _on(
            t,
            get=_operation(
                "list_invoices",
                "billing",
                "Issued invoices, newest first",
                200,
                _json(r.Invoice, many=True),
            ),
        ),
        "/{tenant_id}/webhook": _on(
            t,
            get=_operation(
                "get_webhook", "webhook", "The quota-event webhook URL", 200, _json(r.WebhookTarget)
            ),
            put=_operation(
                "set_webhook",
                "webhook",
                "Set the webhook; answers its signing secret, once",
                200,
                _json(r.WebhookSecret),
                body=WebhookRequest,
            ),
            delete=_operation("delete_webhook", "webhook", "Remove the webhook", 204, None),
        ),
        "/{tenant_id}/webhook/deliveries": _on(
            t,
            get=_operation(
                "list_webhook_deliveries",
                "webhook",
                "The latest quota events and how their deliveries ended, newest first",
                200,
                _json(r.WebhookDeliveryList),
            ),
        ),
        "/{tenant_id}/audit": _on(
            t,
            get=_operation(
                "list_audit_entries",
                "audit",
                "Audit log, newest first",
                200,
                _json(r.AuditPage),
                422,
                query=[_PAGE, _query("before", {"type": "integer"}, "next_before of the last one")],
            ),
        ),
    }
