"""The web console: server-rendered pages for tenants and operators over the admin API
(``docs/console.md``)."""

from __future__ import annotations

from tenant_gateway.console.app import CONTENT_SECURITY_POLICY, build_console

__all__ = ["CONTENT_SECURITY_POLICY", "build_console"]
