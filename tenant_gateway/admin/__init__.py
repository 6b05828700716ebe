"""The admin sub-app (tenant CRUD, users, usage, plans)."""

from tenant_gateway.admin.app import build_admin_app

__all__ = ["build_admin_app"]
