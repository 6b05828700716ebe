"""tenant_gateway: a drop-in ASGI middleware that makes an API multi-tenant."""

from tenant_gateway.clock import Clock, Period, Sleep
from tenant_gateway.context import current_tenant, get_current_tenant
from tenant_gateway.events import QuotaEvent
from tenant_gateway.exceptions import (
    ConfigurationError,
    NoTenantContext,
    Problem,
    StoreUnavailable,
    TenantGatewayError,
)
from tenant_gateway.frameworks import django_routes, quart_routes
from tenant_gateway.middleware import TenantGateway
from tenant_gateway.models import Role, Tenant, TenantStatus
from tenant_gateway.plans import DEFAULT_PLANS, Plan, PlanCatalog, load_plans
from tenant_gateway.postgres.database import tenant_transaction
from tenant_gateway.postgres.isolation import isolate_table
from tenant_gateway.settings import Settings

__all__ = [
    "DEFAULT_PLANS",
    "Clock",
    "ConfigurationError",
    "NoTenantContext",
    "Period",
    "Plan",
    "PlanCatalog",
    "Problem",
    "QuotaEvent",
    "Role",
    "Settings",
    "Sleep",
    "StoreUnavailable",
    "Tenant",
    "TenantGateway",
    "TenantGatewayError",
    "TenantStatus",
    "current_tenant",
    "django_routes",
    "get_current_tenant",
    "isolate_table",
    "load_plans",
    "quart_routes",
    "tenant_transaction",
]
