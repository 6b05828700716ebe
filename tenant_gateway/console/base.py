"""What every console page shares: the signed-in caller, forms and their CSRF check, rendering
(autoescaped templates) and the answers that stop a request (sign in again, an error page)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tenant_gateway.admin.auth import Caller, OperatorAuth
from tenant_gateway.console.calls import AdminCalls
from tenant_gateway.console.session import Session, SessionSigner
from tenant_gateway.keys import is_id
from tenant_gateway.models import ROLE_ACTIONS, Action, Role, TenantStatus
from tenant_gateway.resolver import Principal
from tenant_gateway.services import Services

__all__ = [
    "COOKIE",
    "PRESESSION_COOKIE",
    "ConsoleHandlers",
    "PageError",
    "SignInRequired",
    "Visitor",
]

COOKIE = "tg_console"
PRESESSION_COOKIE = "tg_console_signin"
FORM_MAX_BYTES = 16 * 1024
FORM_MAX_FIELDS = 20


class SignInRequired(Exception):
    """No valid session: a page sends the browser to sign in, a change answers 401."""

    def __init__(self, reason: str = "expired") -> None:
        super().__init__(reason)
        self.reason = reason


class PageError(Exception):
    """An error page: status, a stable code, what went wrong, and the fields at fault."""

    def __init__(
        self, status: int, code: str, detail: str, errors: list[Mapping[str, Any]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.errors = status, code, detail, errors or []


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who is signed in: the session and the admin API caller it stands for."""

    session: Session
    caller: Caller

    @property
    def role(self) -> Role | None:
        principal = self.caller.principal
        return None if principal is None else principal.key.role

    def may(self, action: Action) -> bool:
        """The admin API's own role rule (operators may do everything)."""
        role = self.role
        return role is None or action in ROLE_ACTIONS[role]


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("tenant_gateway.console", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise (none does)
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["money"] = lambda cents: f"{cents / 100:,.2f}"
    environment.filters["number"] = lambda value: "∞" if value is None else f"{value:,}"
    return environment


class ConsoleHandlers:
    def __init__(
        self,
        services: Services,
        operators: OperatorAuth | None,
        signer: SessionSigner,
        calls: AdminCalls,
    ) -> None:
        self.services = services
        self.operators = operators
        self.signer = signer
        self.calls = calls
        self.templates = _environment()

    # -- answers ------------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        visitor: Visitor | None = None,
        **context: Any,
    ) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        context.setdefault("notice", None)
        page = self.templates.get_template(template).render(
            base=base,
            visitor=visitor,
            csrf=None if visitor is None else self.signer.csrf_token(visitor.session.nonce),
            **context,
        )
        return HTMLResponse(page, status_code=status)

    def redirect(self, request: Request, to: str) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + to, status_code=303)

    def set_cookie(
        self, request: Request, response: Response, name: str, value: str, max_age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=request.scope.get("root_path", "") or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    def clear_cookie(self, request: Request, response: Response, name: str) -> None:
        response.delete_cookie(
            name,
            path=request.scope.get("root_path", "") or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    # -- who is calling -----------------------------------------------------------------------

    async def visitor(self, request: Request) -> Visitor:
        """The signed-in visitor; ``SignInRequired`` when there is none any more. A tenant's
        key is looked up on every request: revoked, expired, or its tenant suspended or
        deleted, and the session is over."""
        session = self.signer.read(request.cookies.get(COOKIE))
        if session is None:
            raise SignInRequired()
        if await self.services.directory.session_ended(session.nonce):
            raise SignInRequired("signed_out")
        if session.is_operator:
            if self.operators is None:
                raise SignInRequired()
            return Visitor(session, Caller(operator=session.subject or "operator"))
        directory = self.services.directory
        tenant = await directory.get_tenant(session.tenant_id or "")
        if tenant is None:
            raise SignInRequired("ended")
        key = next(
            (k for k in await directory.list_keys(tenant.id) if k.id == session.key_id), None
        )
        if key is None or not key.usable_at(self.services.clock()):
            raise SignInRequired("ended")
        if tenant.status is not TenantStatus.ACTIVE:
            raise SignInRequired("suspended")
        return Visitor(session, Caller(principal=Principal(tenant, key)))

    async def change(self, request: Request) -> tuple[Visitor, dict[str, str]]:
        """The visitor and the form of a change (POST), its CSRF token checked."""
        visitor = await self.visitor(request)
        form = await read_form(request)
        if not self.signer.csrf_valid(visitor.session.nonce, form.get("csrf")):
            raise PageError(
                403,
                "csrf_failed",
                "This form is not from your current session. Reload the page and try again.",
            )
        return visitor, form

    def tenant_id(self, request: Request, visitor: Visitor) -> str:
        """The tenant in the path: a tenant's session sees its own only (404 otherwise, as the
        admin API answers)."""
        tenant_id: str = request.path_params["tenant_id"]
        own = visitor.session.tenant_id
        if not is_id(tenant_id) or (not visitor.session.is_operator and tenant_id != own):
            raise PageError(404, "not_found", "No such tenant.")
        return tenant_id

    def same(self, given: str | None, expected: str) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body of at most 16 KiB and 20 fields, as text;
    anything else is a 4xx page, never an exception."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise PageError(415, "unsupported_media_type", "Send the form as the page does.")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > FORM_MAX_BYTES):
        raise PageError(413, "payload_too_large", "The form is too large.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise PageError(413, "payload_too_large", "The form is too large.")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=FORM_MAX_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "validation_error", "The form could not be read.") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form or "\x00" in value:
            raise PageError(400, "validation_error", f"The form's field {name!r} is not valid.")
        form[name] = value
    return form
