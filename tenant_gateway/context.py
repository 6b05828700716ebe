"""Where the wrapped app finds the current tenant.

The gateway sets three equivalent handles for each admitted request:
``scope["state"]["tenant"]``, the ``current_tenant`` ContextVar (reset in ``finally``), and
``get_current_tenant()``, which also works as a FastAPI dependency.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

from tenant_gateway.exceptions import NoTenantContext
from tenant_gateway.models import Tenant

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Database

__all__ = ["current_database", "current_tenant", "get_current_tenant"]

current_tenant: ContextVar[Tenant | None] = ContextVar("tenant_gateway_tenant", default=None)
current_database: ContextVar[Database | None] = ContextVar("tenant_gateway_database", default=None)


def get_current_tenant() -> Tenant:
    """The tenant of the request being served; ``NoTenantContext`` outside one."""
    tenant = current_tenant.get()
    if tenant is None:
        raise NoTenantContext("no tenant: this code is not running under a gateway request")
    return tenant
