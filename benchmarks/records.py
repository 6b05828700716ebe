"""Tenant records built the way the admin API's ``POST /register`` builds them, for benchmarks
that fill a gateway's directory in process (``memory.py``, ``profile.py``) without HTTP.

``new_tenant`` mirrors ``AdminAPI.register`` and ``AdminAPI._new_key`` in
``tenant_gateway/admin/app.py``; ``register`` hands the records to the directory's own
``register`` (the call the admin API makes), so the stores see exactly what they would.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tenant_gateway import TenantGateway
from tenant_gateway.keys import generate_api_key, hash_api_key, key_display_prefix, new_id
from tenant_gateway.models import ApiKeyRecord, Role, Tenant, TenantStatus, User

__all__ = ["TenantRecords", "new_tenant", "register"]

TenantRecords = tuple[Tenant, User, ApiKeyRecord, str]
"""The tenant, its admin user, its first key's record, and that key's secret."""


def new_tenant(
    plan: str, name: str, admin_email: str, now: datetime | None = None
) -> TenantRecords:
    now = now or datetime.now(UTC)
    tenant = Tenant(
        id=new_id("tenant"),
        name=name,
        plan=plan,
        status=TenantStatus.ACTIVE,
        max_users=None,
        admin_email=admin_email,
        created_at=now,
    )
    admin = User(new_id("usr"), tenant.id, admin_email, Role.ADMIN, now)
    secret = generate_api_key()
    key = ApiKeyRecord(
        id=new_id("key"),
        tenant_id=tenant.id,
        key_hash=hash_api_key(secret),
        prefix=key_display_prefix(secret),
        name="registration",
        role=Role.ADMIN,
        created_at=now,
        expires_at=None,
    )
    return tenant, admin, key, secret


async def register(gateway: TenantGateway, plan: str, name: str = "Bench") -> tuple[str, str]:
    """Register one tenant through the gateway's directory; (tenant id, API key)."""
    if gateway.services.plans.get(plan) is None:
        raise ValueError(f"plan {plan!r} is not in the gateway's catalogue")
    tenant, admin, key, secret = new_tenant(plan, name, f"{new_id('bench')}@example.com")
    await gateway.services.directory.register(tenant, admin, key)
    return tenant.id, secret
