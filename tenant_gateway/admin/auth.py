"""Who is calling the admin API, and what they may do.

An operator presents a JWT (HS256 with a shared secret, or RS256/ES256 with a public key;
``exp`` required; ``exp``, ``nbf`` and ``iat`` integers; a lifetime of at most ``max_lifetime``;
``aud``/``iss`` checked when configured; claim ``role: "operator"``) and may do everything.
A tenant presents one of its own keys and acts on its own tenant only, within the key's role.
Another tenant's id answers exactly as a missing one does: 404.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from starlette.requests import Request

from tenant_gateway import problems
from tenant_gateway.client_limits import client_address
from tenant_gateway.exceptions import ConfigurationError
from tenant_gateway.keys import KEY_PREFIX, extract_api_key
from tenant_gateway.models import ROLE_ACTIONS, Action
from tenant_gateway.resolver import KeyResolver, Principal
from tenant_gateway.settings import Settings

__all__ = [
    "DEFAULT_MAX_LIFETIME",
    "CALLER_SCOPE_KEY",
    "Caller",
    "OperatorAuth",
    "authenticate",
    "authorize",
    "mint_operator_token",
    "require_operator",
]


DEFAULT_MAX_LIFETIME = 24 * 3600.0
"""Seconds an operator token may live, from ``iat`` (or from now without one) to ``exp``."""
_LATEST_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z: a time claim beyond it is nonsense


@dataclass(frozen=True, slots=True)
class OperatorAuth:
    """How operator tokens are verified. ``secret`` (HS256) or ``public_key`` (PEM, RS256/ES256).
    ``max_lifetime`` (seconds, ``None`` for no limit) bounds how long a token can stay valid."""

    secret: str | None = None
    public_key: str | None = None
    audience: str | None = None
    issuer: str | None = None
    max_lifetime: float | None = DEFAULT_MAX_LIFETIME

    def __post_init__(self) -> None:
        if (self.secret is None) == (self.public_key is None):
            raise ConfigurationError("operator auth needs exactly one of a secret or a public key")
        if self.secret is not None and len(self.secret) < 32:
            raise ConfigurationError("admin_jwt_secret must be at least 32 characters")
        if self.max_lifetime is not None and not self.max_lifetime > 0:
            raise ConfigurationError("admin_jwt_max_lifetime must be positive (or None)")

    @classmethod
    def configured(cls, settings: Settings) -> OperatorAuth | None:
        """From the settings' ``admin_jwt_*`` options; None when operator tokens are off."""
        if not (settings.admin_jwt_secret or settings.admin_jwt_public_key):
            return None
        return cls(
            secret=settings.admin_jwt_secret,
            public_key=settings.admin_jwt_public_key,
            audience=settings.admin_jwt_audience,
            issuer=settings.admin_jwt_issuer,
            max_lifetime=settings.admin_jwt_max_lifetime,
        )

    def verify(self, token: str) -> str:
        """The operator's subject, or a 401 Problem. The algorithm list is fixed by the key
        type, so neither ``alg: none`` nor an HS256 token keyed with the public key passes."""
        if self.secret is not None:
            key, algorithms = self.secret, ["HS256"]
        else:
            key, algorithms = self.public_key or "", ["RS256", "ES256"]
        required = ["exp"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": required},
            )
        except jwt.PyJWTError as exc:
            raise problems.unauthorized(f"The operator token is not valid: {exc}.") from exc
        self._check_times(claims)
        if claims.get("role") != "operator":
            raise problems.unauthorized("The token does not carry the operator role.")
        subject = claims.get("sub")
        return subject if isinstance(subject, str) and subject else "operator"

    def _check_times(self, claims: dict[str, object]) -> None:
        """PyJWT takes ``int(claim)``, so ``"exp": "4102444800"`` or ``1e308`` would pass and
        never expire: the time claims must be JSON integers in range, and the token's lifetime
        (``exp`` minus ``iat``, or minus now without ``iat``) at most ``max_lifetime``."""
        times: dict[str, int] = {}
        for name in ("exp", "nbf", "iat"):
            if name not in claims:
                continue
            value = claims[name]
            if type(value) is not int or not 0 <= value <= _LATEST_TIME:  # bool is not int here
                raise problems.unauthorized(
                    f"The operator token is not valid: '{name}' must be an integer time."
                )
            times[name] = value
        if self.max_lifetime is None:
            return
        issued = times.get("iat", time.time())
        if times["exp"] - issued > self.max_lifetime:  # exp is required, so present
            raise problems.unauthorized(
                "The operator token lives too long: its exp is more than"
                f" {self.max_lifetime:g} s after its iat (or now, without one)."
            )


def mint_operator_token(
    secret: str,
    subject: str,
    lifetime: float,
    *,
    now: float,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 operator token as ``OperatorAuth(secret=…)`` accepts it: ``role: operator``,
    ``sub``, integer ``iat`` and ``exp`` ``lifetime`` seconds apart (``aud``, ``iss`` if given)."""
    issued = int(now)
    claims: dict[str, object] = {
        "sub": subject,
        "role": "operator",
        "iat": issued,
        "exp": issued + int(lifetime),
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True, slots=True)
class Caller:
    operator: str | None = None
    """The operator token's subject, when an operator calls."""
    principal: Principal | None = None
    """The tenant key's principal, when a tenant calls."""

    @property
    def is_operator(self) -> bool:
        return self.operator is not None

    @property
    def actor(self) -> str:
        """How the audit log names the caller."""
        if self.operator is not None:
            return f"operator:{self.operator}"
        if self.principal is not None:
            return f"key:{self.principal.key.id}"
        return "anonymous"


CALLER_SCOPE_KEY = "tenant_gateway.caller"
"""The scope key under which in-process code (the console) hands the admin API a caller it
has already authenticated. Only Python code can put a ``Caller`` in a scope: no server builds
one from a request."""


async def authenticate(
    request: Request,
    resolver: KeyResolver,
    operators: OperatorAuth | None,
    *,
    required: bool = True,
) -> Caller:
    given = request.scope.get(CALLER_SCOPE_KEY)
    if isinstance(given, Caller):
        return given
    raw = extract_api_key(request.headers)
    if raw is None:
        if required:
            raise problems.missing_api_key()
        return Caller()
    if raw.startswith(KEY_PREFIX):
        return Caller(principal=await resolver.resolve(raw, client_address(request.scope)))
    if operators is None:
        raise problems.unauthorized(
            "Operator tokens are not enabled on this gateway: its operator enables them with"
            " admin_jwt_secret (tenant-gateway serve: TG_ADMIN_JWT_SECRET or --admin-jwt-secret)"
            " and mints one with tenant-gateway token --sub NAME."
        )
    return Caller(operator=operators.verify(raw))


def authorize(caller: Caller, tenant_id: str, action: Action) -> None:
    """Operators may do everything; a key acts on its own tenant only, within its role."""
    if caller.is_operator:
        return
    principal = caller.principal
    if principal is None or principal.tenant.id != tenant_id:
        raise problems.not_found()
    if action not in ROLE_ACTIONS[principal.key.role]:
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
