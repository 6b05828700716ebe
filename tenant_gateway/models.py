"""The values the gateway passes around: tenants, users, keys. All immutable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tenant_gateway.clock import format_timestamp
from tenant_gateway.plans import Plan

__all__ = [
    "ApiKeyRecord",
    "NewApiKey",
    "Role",
    "Tenant",
    "TenantStatus",
    "User",
    "effective_seat_limit",
]


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


class Role(StrEnum):
    ADMIN = "admin"
    DEVELOPER = "developer"
    VIEWER = "viewer"
    BILLING = "billing"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    plan: str
    status: TenantStatus
    max_users: int | None
    admin_email: str
    created_at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "plan": self.plan,
            "status": self.status.value,
            "max_users": self.max_users,
            "admin_email": self.admin_email,
            "created_at": format_timestamp(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class User:
    id: str
    tenant_id: str
    email: str
    role: Role
    created_at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "email": self.email,
            "role": self.role.value,
            "created_at": format_timestamp(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What is stored of a key: never the secret, only its SHA-256 digest."""

    id: str
    tenant_id: str
    key_hash: bytes
    prefix: str
    name: str | None
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None = None

    def usable_at(self, timestamp: float) -> bool:
        if self.revoked_at is not None and self.revoked_at.timestamp() <= timestamp:
            return False
        return self.expires_at is None or timestamp < self.expires_at.timestamp()


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A freshly created key: the record plus the secret, shown exactly once."""

    record: ApiKeyRecord
    secret: str


def effective_seat_limit(plan: Plan, tenant: Tenant) -> int | None:
    """min(plan max users, tenant max_users); ``None`` when both are unlimited."""
    limits = [limit for limit in (plan.max_users, tenant.max_users) if limit is not None]
    return min(limits) if limits else None
