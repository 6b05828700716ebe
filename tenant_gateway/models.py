"""The values the gateway passes around: tenants, users, keys. All immutable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tenant_gateway.clock import format_timestamp
from tenant_gateway.plans import Plan

__all__ = [
    "API_ROLES",
    "ROLE_ACTIONS",
    "Action",
    "ApiKeyRecord",
    "AuditEntry",
    "PlanChange",
    "Role",
    "Tenant",
    "TenantStatus",
    "UsageKey",
    "User",
    "effective_seat_limit",
]

UsageKey = tuple[str, str]
"""A usage hash's key: (tenant id, period ``YYYY-MM``)."""


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


class Role(StrEnum):
    ADMIN = "admin"
    DEVELOPER = "developer"
    VIEWER = "viewer"
    BILLING = "billing"


class Action(StrEnum):
    CALL_API = "call the wrapped API"
    READ_TENANT = "read the tenant"
    MANAGE_TENANT = "change or delete the tenant"
    READ_USERS = "read users"
    MANAGE_USERS = "manage users"
    READ_KEYS = "read keys"
    MANAGE_KEYS = "manage keys"
    READ_USAGE = "read usage"
    READ_BILLING = "read invoices"
    CHANGE_PLAN = "change the plan"
    READ_AUDIT = "read the audit log"
    MOVE_DATA = "export or import data"


_READ_ONLY = {
    Action.READ_TENANT,
    Action.READ_USERS,
    Action.READ_KEYS,
    Action.READ_USAGE,
    Action.READ_BILLING,
}

ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.DEVELOPER: frozenset({Action.CALL_API, Action.READ_TENANT, Action.READ_USAGE}),
    Role.VIEWER: frozenset(_READ_ONLY),
    Role.BILLING: frozenset({Action.READ_TENANT, Action.READ_USAGE, Action.READ_BILLING}),
}

API_ROLES = frozenset(role for role, can in ROLE_ACTIONS.items() if Action.CALL_API in can)
"""The roles whose keys may call the wrapped API."""


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
    last_used_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
        """Metadata only: the secret is never stored, so it can never be listed."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "prefix": self.prefix,
            "created_at": format_timestamp(self.created_at),
            "last_used_at": _timestamp_or_none(self.last_used_at),
            "expires_at": _timestamp_or_none(self.expires_at),
            "revoked_at": _timestamp_or_none(self.revoked_at),
        }

    def usable_at(self, timestamp: float) -> bool:
        if self.revoked_at is not None and self.revoked_at.timestamp() <= timestamp:
            return False
        return self.expires_at is None or timestamp < self.expires_at.timestamp()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: who did what to which tenant, when, and from where."""

    tenant_id: str
    actor: str
    """``operator:<subject>``, ``key:<key id>``, or ``anonymous`` (open sign-up)."""
    action: str
    target: str | None
    at: datetime
    ip: str | None
    id: int = 0
    """Assigned by the store, increasing; the pagination cursor."""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "at": format_timestamp(self.at),
            "ip": self.ip,
        }


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A plan the tenant took on (the plan history, oldest first, starts with registration)."""

    plan: str
    at: datetime
    """When it took effect."""
    calls_before: int | None = None
    """The period's billable calls made before it, stored with the change in one step; None
    for the registration, and for a change stored before this was (migration 0008)."""


def _timestamp_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


def effective_seat_limit(plan: Plan, tenant: Tenant) -> int | None:
    """min(plan max users, tenant max_users); ``None`` when both are unlimited."""
    limits = [limit for limit in (plan.max_users, tenant.max_users) if limit is not None]
    return min(limits) if limits else None
