"""The stores and settings the middleware and the admin sub-app share."""

from __future__ import annotations

from dataclasses import dataclass

from tenant_gateway.admin.auth import OperatorAuth
from tenant_gateway.clock import Clock
from tenant_gateway.directory import TenantDirectory
from tenant_gateway.plans import PlanCatalog
from tenant_gateway.propagation import Invalidator
from tenant_gateway.quota import CounterStore
from tenant_gateway.resolver import KeyResolver
from tenant_gateway.usage import UsageRecorder

__all__ = ["Services"]


@dataclass(frozen=True, slots=True)
class Services:
    plans: PlanCatalog
    directory: TenantDirectory
    counters: CounterStore
    recorder: UsageRecorder
    resolver: KeyResolver
    invalidator: Invalidator
    clock: Clock
    operators: OperatorAuth | None
    allow_signup: bool
    max_body_bytes: int
