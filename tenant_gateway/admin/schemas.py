"""Request bodies of the admin API, validated strictly (wrong types are errors, not coerced).

Parsing rejects what Postgres or a log line would choke on later — NUL and other control
characters, lone surrogates, absurd numbers — so bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from starlette.requests import Request

from tenant_gateway import problems
from tenant_gateway.headers import declared_over
from tenant_gateway.keys import ID_MAX_LENGTH, is_id
from tenant_gateway.models import Role
from tenant_gateway.netpolicy import webhook_target

__all__ = [
    "MAX_GRACE_SECONDS",
    "AddUserRequest",
    "ChangePlanRequest",
    "CreateKeyRequest",
    "RegisterRequest",
    "RotateKeyRequest",
    "UpdateTenantRequest",
    "UpdateUserRequest",
    "StrictBody",
    "checked_user",
    "clean_text",
    "parse_body",
]

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")
MAX_USERS_LIMIT = 1_000_000


def clean_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from exc
    if _CONTROL_RE.search(value):
        raise ValueError("must not contain control characters")
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be blank")
    return stripped


def _email(value: str) -> str:
    value = clean_text(value)
    if len(value) > 254 or _EMAIL_RE.match(value) is None:
        raise ValueError("must be an email address like name@example.com")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(clean_text)]
Email = Annotated[str, Field(min_length=3, max_length=254), AfterValidator(_email)]
PlanName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(clean_text)]
MaxUsers = Annotated[int, Field(ge=1, le=MAX_USERS_LIMIT)]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RegisterRequest(StrictBody):
    name: Name
    plan: PlanName = "free"
    max_users: MaxUsers | None = None
    admin_email: Email


class AddUserRequest(StrictBody):
    email: Email
    role: Annotated[Role, Field(strict=False)] = Role.DEVELOPER  # JSON carries the enum's value


class ChangePlanRequest(StrictBody):
    plan: PlanName


Body = TypeVar("Body", bound=StrictBody)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "(body)",
            "message": error["msg"],
        }
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refusing (413) at once if its declared length is over
    ``limit``, else as soon as what arrived passes it."""
    if declared_over(request.headers.get("content-length"), limit):
        raise problems.payload_too_large(limit)
    return _counted(request.stream(), limit)


async def _counted(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise problems.payload_too_large(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refused (413) past ``limit`` bytes."""
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


async def parse_body(
    request: Request, model: type[Body], limit: int, *, allow_empty: bool = False
) -> Body:
    """The body validated as ``model``; ``allow_empty`` treats no body as ``{}``."""
    raw = await read_body(request, limit)
    if allow_empty and not raw.strip():
        raw = b"{}"
    try:
        document: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8 too; RecursionError is absurdly deep nesting.
        raise problems.validation_error(
            "The body is not valid JSON.",
            [{"field": "(body)", "message": "expected a JSON object"}],
            status=400,
        ) from exc
    if not isinstance(document, dict):
        raise problems.validation_error(
            "The body must be a JSON object.",
            [{"field": "(body)", "message": "expected a JSON object"}],
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise problems.validation_error("The request body is invalid.", field_errors(exc)) from exc
    except RecursionError as exc:
        raise problems.validation_error(
            "The body is nested too deeply.", [{"field": "(body)", "message": "too deep"}]
        ) from exc


MAX_GRACE_SECONDS = 30 * 86_400
KeyName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(clean_text)]
LenientRole = Annotated[Role, Field(strict=False)]  # JSON carries the enum's value


def _timestamp_text(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string such as 2027-01-31T00:00:00Z")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), Field(strict=False)]


def _id(value: str) -> str:
    if not is_id(value):
        raise ValueError(
            f"must be an id: printable ASCII without spaces, at most {ID_MAX_LENGTH} characters"
        )
    return value


def _utc(value: datetime) -> datetime:
    try:  # 9999-12-31T23:00:00-05:00 is a datetime, but not in UTC
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be a moment between the years 1 and 9999 in UTC") from None


class ImportedUser(AddUserRequest):
    """A ``tg_users`` row of an import: a user as ``POST /{id}/users`` would add it, with the
    id (an id the API can name: ``keys.is_id``) and creation time of its source."""

    id: Annotated[str, AfterValidator(_id)]
    created_at: Annotated[Timestamp, AfterValidator(_utc)]


def checked_user(row: Mapping[str, Any]) -> dict[str, str]:
    """A user from elsewhere (an import's ``tg_users`` row) held to exactly the rules of
    ``POST /{id}/users``: its ``id``, ``email``, ``role`` and ``created_at`` as they are to be
    stored, or ValueError naming each field at fault."""
    fields = {name: row[name] for name in ("id", "email", "role", "created_at") if name in row}
    try:
        user = ImportedUser.model_validate(fields)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise ValueError("; ".join(f"{e['field']}: {e['message']}" for e in errors)) from None
    return {
        "id": user.id,
        "email": user.email,
        "role": user.role.value,
        "created_at": user.created_at.isoformat(),
    }


class CreateKeyRequest(StrictBody):
    name: KeyName | None = None
    role: LenientRole = Role.DEVELOPER
    expires_at: Timestamp | None = None


class RotateKeyRequest(StrictBody):
    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_SECONDS)] = 0


class UpdateTenantRequest(StrictBody):
    name: Name | None = None
    max_users: MaxUsers | None = None
    admin_email: Email | None = None


class UpdateUserRequest(StrictBody):
    role: LenientRole


def _webhook_url(value: str) -> str:
    """The URL's form only: where it leads is the webhook policy's to judge (it knows the
    networks the operator allowed, and resolves names)."""
    value = clean_text(value)
    webhook_target(value)  # ValueError says what is wrong
    return value


class WebhookRequest(StrictBody):
    url: Annotated[str, Field(min_length=8, max_length=2000), AfterValidator(_webhook_url)]
