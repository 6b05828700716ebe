"""Who is calling the admin API: an operator (JWT) or a tenant (its own API key)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import jwt
from starlette.requests import Request

from tenant_gateway import problems
from tenant_gateway.keys import KEY_PREFIX, extract_api_key
from tenant_gateway.models import Role
from tenant_gateway.resolver import Principal
from tenant_gateway.services import Services

__all__ = ["Action", "Caller", "authenticate", "authorize", "require_operator"]


class Action(StrEnum):
    READ_TENANT = "read_tenant"
    MANAGE_TENANT = "manage_tenant"
    READ_USERS = "read_users"
    MANAGE_USERS = "manage_users"
    READ_USAGE = "read_usage"
    CHANGE_PLAN = "change_plan"


_ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.DEVELOPER: frozenset({Action.READ_TENANT, Action.READ_USAGE}),
    Role.VIEWER: frozenset({Action.READ_TENANT, Action.READ_USERS, Action.READ_USAGE}),
    Role.BILLING: frozenset({Action.READ_TENANT, Action.READ_USAGE, Action.CHANGE_PLAN}),
}


@dataclass(frozen=True, slots=True)
class Caller:
    operator: str | None = None
    """The operator token's subject, when an operator calls."""
    principal: Principal | None = None
    """The tenant key's principal, when a tenant calls."""

    @property
    def is_operator(self) -> bool:
        return self.operator is not None


async def authenticate(request: Request, services: Services, *, required: bool = True) -> Caller:
    raw = extract_api_key(request.headers)
    if raw is None:
        if required:
            raise problems.missing_api_key()
        return Caller()
    if raw.startswith(KEY_PREFIX):
        return Caller(principal=await services.resolver.resolve(raw))
    if services.jwt_secret is None:
        raise problems.unauthorized("Operator tokens are not enabled on this gateway.")
    try:
        claims = jwt.decode(
            raw, services.jwt_secret, algorithms=["HS256"], options={"require": ["exp"]}
        )
    except jwt.PyJWTError as exc:
        raise problems.unauthorized(f"The operator token is not valid: {exc}.") from exc
    if claims.get("role") != "operator":
        raise problems.unauthorized("The token does not carry the operator role.")
    subject = claims.get("sub")
    return Caller(operator=subject if isinstance(subject, str) else "operator")


def authorize(caller: Caller, tenant_id: str, action: Action) -> None:
    """Operators may do everything; a key acts on its own tenant only, within its role.

    Another tenant's id answers 404 exactly as a missing one would, so existence never leaks.
    """
    if caller.is_operator:
        return
    principal = caller.principal
    if principal is None or principal.tenant.id != tenant_id:
        raise problems.not_found()
    if action not in _ROLE_ACTIONS[principal.key.role]:
        raise problems.forbidden(f"A {principal.key.role.value} key may not {action.value}.")


def require_operator(caller: Caller, tenant_id: str | None = None) -> None:
    """Operator-only actions: a tenant key gets 403 on its own tenant, 404 on any other."""
    if caller.is_operator:
        return
    if tenant_id is not None and (
        caller.principal is None or caller.principal.tenant.id != tenant_id
    ):
        raise problems.not_found()
    raise problems.forbidden("Only an operator may do this.")
