"""Request bodies of the admin API, validated strictly (wrong types are errors, not coerced).

Parsing rejects what Postgres or a log line would choke on later — NUL and other control
characters, lone surrogates, absurd numbers — so bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    ValidationError,
)

from tenant_gateway.bodies import StrictBody, clean_text, field_errors
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
    "checked_user",
]

_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")
MAX_USERS_LIMIT = 1_000_000


def _email(value: str) -> str:
    value = clean_text(value)
    if len(value) > 254 or _EMAIL_RE.match(value) is None:
        raise ValueError("must be an email address like name@example.com")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(clean_text)]
Email = Annotated[str, Field(min_length=3, max_length=254), AfterValidator(_email)]
PlanName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(clean_text)]
MaxUsers = Annotated[int, Field(ge=1, le=MAX_USERS_LIMIT)]


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
