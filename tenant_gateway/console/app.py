"""The web console, mounted inside the admin sub-app at ``console_path`` (``/console``).

Server-rendered pages over the admin API (``calls.py``): signing in and out (``SignIn``), a
tenant's view (``tenant_pages.py``), the operators' list of tenants (``operator_pages.py``).
Every answer carries a strict Content-Security-Policy (scripts and styles from the console's
own static files only: no inline script, no style attribute) and is never cached.

The console lives under the admin prefix, which the gateway hands to the admin sub-app before
any metering: the wrapped API's requests never reach it, and it adds nothing to their path.
"""

from __future__ import annotations

from datetime import UTC, datetime

import jwt
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.admin.auth import OperatorAuth
from tenant_gateway.client_limits import client_address
from tenant_gateway.console.base import (
    COOKIE,
    PRESESSION_COOKIE,
    ConsoleHandlers,
    PageError,
    SignInRequired,
    read_form,
)
from tenant_gateway.console.calls import AdminCalls, AdminRefused
from tenant_gateway.console.operator_pages import OperatorPages
from tenant_gateway.console.session import PRESESSION_LIFETIME, SessionSigner, console_key
from tenant_gateway.console.tenant_pages import TenantPages
from tenant_gateway.exceptions import Problem, Refusal, StoreUnavailable
from tenant_gateway.keys import KEY_PREFIX
from tenant_gateway.models import Role
from tenant_gateway.services import Services

__all__ = ["CONTENT_SECURITY_POLICY", "build_console"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_CONSOLE_ROLES = (Role.ADMIN, Role.VIEWER, Role.BILLING)
_REASONS = {
    "expired": "Your session has ended. Sign in again.",
    "ended": "That key no longer works (revoked, expired, or its tenant deleted).",
    "suspended": "This tenant is suspended. An operator can resume it.",
    "signed_out": "You are signed out.",
}


class SecurityHeaders:
    """The console's headers on every answer, pages, redirects, errors and static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SignIn(ConsoleHandlers):
    async def home(self, request: Request) -> Response:
        try:
            visitor = await self.visitor(request)
        except SignInRequired:
            return self.redirect(request, "/sign-in")
        if visitor.session.is_operator:
            return self.redirect(request, "/tenants")
        return self.redirect(request, f"/tenants/{visitor.session.tenant_id}")

    async def form(self, request: Request, error: PageError | None = None) -> Response:
        value, nonce = self.signer.presession()
        reason = request.query_params.get("reason", "")
        response = self.render(
            request,
            "sign_in.html",
            status=error.status if error else 200,
            signin_csrf=self.signer.csrf_token(nonce),
            notice=_REASONS.get(reason),
            error=error,
            operators=self.operators is not None,
        )
        self.set_cookie(request, response, PRESESSION_COOKIE, value, int(PRESESSION_LIFETIME))
        return response

    async def sign_in(self, request: Request) -> Response:
        try:
            form = await read_form(request)
            nonce = self.signer.presession_nonce(request.cookies.get(PRESESSION_COOKIE))
            if not self.signer.csrf_valid(nonce, form.get("csrf")):
                raise PageError(403, "csrf_failed", "The sign-in form expired. Try again.")
            credential = form.get("credential", "").strip()
            if not credential:
                raise PageError(422, "validation_error", "Paste an API key or an operator token.")
            if credential.startswith(KEY_PREFIX):
                response = await self._tenant(request, credential)
            else:
                response = self._operator(request, credential)
        except PageError as error:
            return await self.form(request, error)
        except Problem as refused:
            return await self.form(request, PageError(refused.status, refused.code, refused.detail))
        except Refusal as refusal:
            answer = problems.for_refusal(refusal)
            return await self.form(request, PageError(answer.status, answer.code, answer.detail))
        self.clear_cookie(request, response, PRESESSION_COOKIE)
        return response

    async def _tenant(self, request: Request, credential: str) -> Response:
        principal = await self.services.resolver.resolve(credential, client_address(request.scope))
        if principal.key.role not in _CONSOLE_ROLES:
            raise PageError(
                403,
                "forbidden",
                f"A {principal.key.role.value} key calls the API; sign in with an admin,"
                " viewer or billing key.",
            )
        _, value = self.signer.issue(
            "tenant", tenant_id=principal.tenant.id, key_id=principal.key.id
        )
        response = self.redirect(request, f"/tenants/{principal.tenant.id}")
        self.set_cookie(request, response, COOKIE, value, int(self.signer.lifetime))
        return response

    def _operator(self, request: Request, token: str) -> Response:
        if self.operators is None:
            raise PageError(401, "unauthorized", "Operator sign-in is not enabled here.")
        subject = self.operators.verify(token)
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        _, value = self.signer.issue("operator", subject=subject, not_after=float(expires))
        response = self.redirect(request, "/tenants")
        self.set_cookie(request, response, COOKIE, value, int(self.signer.lifetime))
        return response

    async def sign_out(self, request: Request) -> Response:
        session = self.signer.read(request.cookies.get(COOKIE))
        form = await read_form(request)
        if session is not None and not self.signer.csrf_valid(session.nonce, form.get("csrf")):
            raise PageError(403, "csrf_failed", "This form is not from your current session.")
        if session is not None:  # refused from now on, wherever a copy of the cookie is
            now = self.services.clock()
            await self.services.directory.end_session(
                session.nonce, _moment(session.expires), _moment(now)
            )
        response = self.redirect(request, "/sign-in?reason=signed_out")
        self.clear_cookie(request, response, COOKIE)
        return response


def _moment(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def build_console(services: Services, operators: OperatorAuth | None, admin: ASGIApp) -> ASGIApp:
    """The console over ``admin`` (the admin sub-app it calls in process)."""
    settings = services.settings
    signer = SessionSigner(
        console_key(settings.console_secret, settings.admin_jwt_secret),
        services.clock,
        settings.console_session_lifetime,
    )
    shared = (services, operators, signer, AdminCalls(admin, settings.admin_prefix))
    sign_in, tenants, operator = SignIn(*shared), TenantPages(*shared), OperatorPages(*shared)

    async def page_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, SignInRequired):
            if request.method in ("GET", "HEAD"):
                response: Response = sign_in.redirect(request, f"/sign-in?reason={exc.reason}")
            else:
                error = PageError(401, "unauthorized", _REASONS[exc.reason])
                response = sign_in.render(request, "error.html", 401, error=error)
            sign_in.clear_cookie(request, response, COOKIE)
            return response
        error = _as_page_error(exc)
        return sign_in.render(request, "error.html", error.status, error=error)

    t = "/tenants/{tenant_id}"
    routes = [
        Route("/", sign_in.home, methods=["GET"]),
        Route("/sign-in", sign_in.form, methods=["GET"]),
        Route("/sign-in", sign_in.sign_in, methods=["POST"]),
        Route("/sign-out", sign_in.sign_out, methods=["POST"]),
        Route("/tenants", operator.tenants, methods=["GET"]),
        Route(t + "/suspend", operator.suspend, methods=["POST"]),
        Route(t + "/resume", operator.resume, methods=["POST"]),
        *tenants.routes(t),
        Mount("/static", StaticFiles(packages=[("tenant_gateway.console", "static")])),
    ]
    handled = (SignInRequired, PageError, AdminRefused, Problem, Refusal, StoreUnavailable)
    handlers = {kind: page_error for kind in (*handled, HTTPException, Exception)}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return SecurityHeaders(app)


def _as_page_error(exc: Exception) -> PageError:
    if isinstance(exc, PageError):
        return exc
    if isinstance(exc, AdminRefused):
        problem = exc.problem
        errors = problem.get("errors")
        return PageError(
            exc.status,
            str(problem.get("code", "error")),
            str(problem.get("detail", "The request failed.")),
            errors if isinstance(errors, list) else None,
        )
    if isinstance(exc, Problem):
        return PageError(exc.status, exc.code, exc.detail, list(exc.errors or []))
    if isinstance(exc, Refusal):
        return _as_page_error(problems.for_refusal(exc))
    if isinstance(exc, StoreUnavailable):
        return PageError(503, "service_unavailable", str(exc))
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            return PageError(405, "method_not_allowed", "This page does not take that method.")
        return PageError(404, "not_found", "No such page.")
    return PageError(500, "internal_error", "An unexpected error occurred.")
