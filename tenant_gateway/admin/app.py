"""The admin sub-app mounted at ``/api/v1/tenants`` (SPEC §6).

Admin calls are authenticated here (operator JWT or the tenant's own key), are not metered,
and every change is written to the tenant's audit log by the directory, in the same transaction
as the change. Path ids that cannot name anything (``keys.is_id``) are 404 without a query.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.admin.auth import (
    Caller,
    OperatorAuth,
    authenticate,
    authorize,
    require_operator,
)
from tenant_gateway.admin.openapi import openapi_document
from tenant_gateway.admin.schemas import (
    AddUserRequest,
    ChangePlanRequest,
    CreateKeyRequest,
    RegisterRequest,
    RotateKeyRequest,
    UpdateTenantRequest,
    UpdateUserRequest,
    WebhookRequest,
    checked_user,
)
from tenant_gateway.admin.streaming import TransferStream, idle_limited
from tenant_gateway.bodies import limited_stream, parse_body
from tenant_gateway.client_limits import client_address
from tenant_gateway.clock import Period, format_timestamp
from tenant_gateway.directory import TenantChanges
from tenant_gateway.exceptions import (
    ConfigurationError,
    ImportRejected,
    Problem,
    Refusal,
    StoreBusy,
    StoreUnavailable,
    TransferBusy,
)
from tenant_gateway.keys import (
    ID_MAX_LENGTH,
    generate_api_key,
    hash_api_key,
    is_id,
    key_display_prefix,
    new_id,
)
from tenant_gateway.ledger import period_tallies
from tenant_gateway.models import (
    Action,
    ApiKeyRecord,
    AuditEntry,
    Role,
    Tenant,
    TenantStatus,
    User,
    effective_seat_limit,
)
from tenant_gateway.plans import Plan
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.transfer import (
    LineTooLong,
    export_tenant,
    import_tenant,
    numbered_lines,
)
from tenant_gateway.services import Services
from tenant_gateway.transfers import TransferPace, TransferSlot
from tenant_gateway.usage import usage_csv, usage_report

__all__ = ["build_admin_app"]

_PAGE_DEFAULT = 50
_PAGE_MAX = 500
_AUDIT_TEXT_MAX = 200


def _field_error(field: str, message: str, detail: str = "Invalid request.") -> Problem:
    return problems.validation_error(detail, [{"field": field, "message": message}])


def _ascii_digits(raw: str, most: int) -> bool:
    """``str.isdigit`` alone admits ``²`` and ``٣``, which ``int`` then refuses."""
    return raw.isascii() and raw.isdigit() and len(raw) <= most


def _page_size(request: Request) -> int:
    raw = request.query_params.get("limit", str(_PAGE_DEFAULT))
    if not _ascii_digits(raw, len(str(_PAGE_MAX))) or not 1 <= int(raw) <= _PAGE_MAX:
        raise _field_error("limit", f"must be an integer from 1 to {_PAGE_MAX}")
    return int(raw)


def _path_id(request: Request, name: str) -> str:
    """A path id, or 404 without a query when it cannot name anything (NUL, too long…)."""
    value: str = request.path_params[name]
    if not is_id(value):
        raise problems.not_found()
    return value


def _audit_text(text: str) -> str:
    """``text`` fit for the audit log: control and format characters (NUL, line breaks, bidi
    overrides, zero-width), separators and lone surrogates escaped as ``\\u{hex}`` (and ``\\``
    doubled, so an escape cannot be forged), at most 200 characters."""
    escaped = "".join(
        "\\\\" if c == "\\" else c if c.isprintable() else f"\\u{{{ord(c):x}}}" for c in text
    )
    if len(escaped) > _AUDIT_TEXT_MAX:
        return escaped[: _AUDIT_TEXT_MAX - 1] + "…"
    return escaped


class _TenantAdmission:
    """At most ``limit`` admin requests of one tenant at a time in this process (operators'
    are not counted): whatever makes them slow, such as a row its own import holds locked, a
    tenant cannot hold more than that many of the shared pool's connections through the admin
    API. A request counts until its handler's task ends (``_Deadline`` runs ``_ON_END``)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigurationError("admin_tenant_concurrency must be at least 1")
        self.limit = limit
        self._running: dict[str, int] = {}

    def admit(self, scope: Scope, tenant_id: str) -> None:
        on_end = scope.get(_ON_END)
        if on_end is None:  # not under _Deadline: nothing would count it out
            return
        running = self._running.get(tenant_id, 0)
        if running >= self.limit:
            raise problems.concurrent_requests(self.limit)
        self._running[tenant_id] = running + 1
        on_end.append(lambda: self._leave(tenant_id))

    def _leave(self, tenant_id: str) -> None:
        running = self._running.pop(tenant_id) - 1
        if running:
            self._running[tenant_id] = running


class AdminAPI:
    def __init__(
        self, services: Services, operators: OperatorAuth | None, tenant_concurrency: int = 4
    ) -> None:
        self.s = services
        self.operators = operators
        self._admission = _TenantAdmission(tenant_concurrency)

    # -- helpers ---------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.s.clock(), UTC)

    async def _caller(self, request: Request) -> Caller:
        return await authenticate(request, self.s.resolver, self.operators)

    async def _tenant(self, request: Request, action: Action) -> tuple[Caller, Tenant]:
        tenant_id = request.path_params["tenant_id"]
        caller = await self._caller(request)
        authorize(caller, tenant_id, action)
        if not caller.is_operator:
            self._admission.admit(request.scope, tenant_id)
        tenant = await self.s.directory.get_tenant(_path_id(request, "tenant_id"))
        if tenant is None:
            raise problems.not_found()
        return caller, tenant

    def _plan(self, name: str) -> Plan:
        plan = self.s.plans.get(name)
        if plan is None:
            raise _field_error("plan", f"must be one of {', '.join(sorted(self.s.plans))}")
        return plan

    def _entry(
        self,
        request: Request,
        caller: Caller,
        tenant_id: str,
        action: str,
        target: str | None = None,
    ) -> AuditEntry:
        """The entry recording a change: handed to the directory call that makes the change
        (``audit=``), which writes both in one transaction. Actor and target are made safe to
        display."""
        client = request.client
        return AuditEntry(
            tenant_id=tenant_id,
            actor=_audit_text(caller.actor),
            action=action,
            target=None if target is None else _audit_text(target),
            at=self._now(),
            ip=client.host if client else None,
        )

    async def _audit(
        self,
        request: Request,
        caller: Caller,
        tenant_id: str,
        action: str,
        target: str | None = None,
    ) -> None:
        """Record an action that changes nothing in the directory (an export)."""
        await self.s.directory.record_audit(self._entry(request, caller, tenant_id, action, target))

    async def _changed(self, tenant_id: str) -> None:
        await self.s.invalidator.tenant_changed(tenant_id)

    def _new_key(
        self, tenant_id: str, name: str | None, role: Role, expires_at: datetime | None
    ) -> tuple[str, ApiKeyRecord]:
        secret = generate_api_key()
        return secret, ApiKeyRecord(
            id=new_id("key"),
            tenant_id=tenant_id,
            key_hash=hash_api_key(secret),
            prefix=key_display_prefix(secret),
            name=name,
            role=role,
            created_at=self._now(),
            expires_at=expires_at,
        )

    # -- tenants ---------------------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        caller = await authenticate(
            request, self.s.resolver, self.operators, required=not self.s.allow_signup
        )
        if not self.s.allow_signup:
            require_operator(caller)
        elif not caller.is_operator and self.s.signup_limiter is not None:
            # Every self-service attempt counts, valid or not; operators are not limited.
            limiter, address = self.s.signup_limiter, client_address(request.scope)
            wait = limiter.over(address) or await limiter.hit(address)
            if wait:
                raise problems.too_many_attempts("sign-ups", wait)
        body = await parse_body(request, RegisterRequest, self.s.max_body_bytes)
        offered = self.s.signup_plans
        if offered is not None and body.plan not in offered and not caller.is_operator:
            raise _field_error("plan", f"must be one of {', '.join(sorted(offered))}")
        self._plan(body.plan)
        now = self._now()
        tenant = Tenant(
            id=new_id("tenant"),
            name=body.name,
            plan=body.plan,
            status=TenantStatus.ACTIVE,
            max_users=body.max_users,
            admin_email=body.admin_email,
            created_at=now,
        )
        admin = User(new_id("usr"), tenant.id, body.admin_email, Role.ADMIN, now)
        secret, key = self._new_key(tenant.id, "registration", Role.ADMIN, None)
        await self.s.directory.register(
            tenant,
            admin,
            key,
            audit=self._entry(request, caller, tenant.id, "tenant.register", tenant.id),
        )
        return JSONResponse({**tenant.to_json(), "api_key": secret}, status_code=201)

    async def list_tenants(self, request: Request) -> Response:
        require_operator(await self._caller(request))
        limit = _page_size(request)
        after = request.query_params.get("after") or None
        if after is not None and not is_id(after):
            raise _field_error("after", f"must be a tenant id (at most {ID_MAX_LENGTH} characters)")
        tenants = await self.s.directory.list_tenants(limit=limit + 1, after=after)
        page = tenants[:limit]
        return JSONResponse(
            {
                "items": [tenant.to_json() for tenant in page],
                "next_after": page[-1].id if len(tenants) > limit else None,
            }
        )

    async def get_tenant(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_TENANT)
        return JSONResponse(tenant.to_json())

    async def update_tenant(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        body = await parse_body(request, UpdateTenantRequest, self.s.max_body_bytes)
        if not body.model_fields_set:
            raise _field_error("(body)", "name, max_users or admin_email is required")
        changes = TenantChanges(
            name=body.name,
            admin_email=body.admin_email,
            max_users=body.max_users,
            clear_max_users="max_users" in body.model_fields_set and body.max_users is None,
        )
        for field in ("name", "admin_email"):
            if field in body.model_fields_set and getattr(body, field) is None:
                raise _field_error(field, "may not be null")
        updated = await self.s.directory.update_tenant(
            tenant.id,
            changes,
            self._plan(tenant.plan),
            self._now(),
            audit=self._entry(request, caller, tenant.id, "tenant.update", tenant.id),
        )
        if updated is None:
            raise problems.not_found()
        await self._changed(tenant.id)
        return JSONResponse(updated.to_json())

    async def delete_tenant(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        entry = self._entry(request, caller, tenant.id, "tenant.delete", tenant.id)
        if not await self.s.directory.delete_tenant(tenant.id, self._now(), audit=entry):
            raise problems.not_found()
        await self._changed(tenant.id)
        return Response(status_code=204)

    async def _set_status(self, request: Request, status: TenantStatus) -> Response:
        tenant_id = request.path_params["tenant_id"]
        caller = await self._caller(request)
        require_operator(caller, tenant_id)
        tenant_id = _path_id(request, "tenant_id")
        action = "tenant.suspend" if status is TenantStatus.SUSPENDED else "tenant.resume"
        entry = self._entry(request, caller, tenant_id, action, tenant_id)
        tenant = await self.s.directory.set_status(tenant_id, status, audit=entry)
        if tenant is None:
            raise problems.not_found()
        await self._changed(tenant_id)
        return JSONResponse(tenant.to_json())

    async def suspend(self, request: Request) -> Response:
        return await self._set_status(request, TenantStatus.SUSPENDED)

    async def resume(self, request: Request) -> Response:
        return await self._set_status(request, TenantStatus.ACTIVE)

    async def change_plan(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.CHANGE_PLAN)
        limiter = self.s.plan_change_limiter  # each change is a transaction: not in a loop
        if limiter is not None and not caller.is_operator:
            # Every attempt counts, valid or not, before anything is read or written.
            wait = limiter.over(tenant.id) or await limiter.hit(tenant.id)
            if wait:
                raise problems.too_many_changes("plan", wait)
        body = await parse_body(request, ChangePlanRequest, self.s.max_body_bytes)
        plan = self._plan(body.plan)
        at = self._now()
        # The calls made so far stay on the old plan's terms: their count is stored with the
        # change, in its transaction. Read even for the same plan: another change may be
        # stored first, and then this one is a real change too.
        calls_before = await self.s.billing.calls_before(tenant.id, at)
        entry = self._entry(
            request, caller, tenant.id, "tenant.plan", f"{tenant.plan} -> {plan.name}"
        )
        updated = await self.s.directory.change_plan(
            tenant.id, plan, at, calls_before=calls_before, audit=entry
        )
        if updated is None:
            raise problems.not_found()
        await self._changed(tenant.id)
        return JSONResponse(updated.to_json())

    # -- users -----------------------------------------------------------------------------------

    async def add_user(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_USERS)
        body = await parse_body(request, AddUserRequest, self.s.max_body_bytes)
        seat_limit = effective_seat_limit(self._plan(tenant.plan), tenant)
        user = User(new_id("usr"), tenant.id, body.email, body.role, self._now())
        await self.s.directory.add_user(
            user, seat_limit, audit=self._entry(request, caller, tenant.id, "user.create", user.id)
        )
        return JSONResponse(user.to_json(), status_code=201)

    async def list_users(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_USERS)
        users = await self.s.directory.list_users(tenant.id)
        return JSONResponse([user.to_json() for user in users])

    async def get_user(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_USERS)
        user = await self.s.directory.get_user(tenant.id, _path_id(request, "user_id"))
        if user is None:
            raise problems.not_found()
        return JSONResponse(user.to_json())

    async def update_user(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_USERS)
        body = await parse_body(request, UpdateUserRequest, self.s.max_body_bytes)
        user_id = _path_id(request, "user_id")
        entry = self._entry(request, caller, tenant.id, "user.update", user_id)
        user = await self.s.directory.update_user(tenant.id, user_id, body.role, audit=entry)
        if user is None:
            raise problems.not_found()
        return JSONResponse(user.to_json())

    async def delete_user(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_USERS)
        user_id = _path_id(request, "user_id")
        entry = self._entry(request, caller, tenant.id, "user.delete", user_id)
        if not await self.s.directory.delete_user(tenant.id, user_id, audit=entry):
            raise problems.not_found()
        return Response(status_code=204)

    # -- keys ------------------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_KEYS)
        body = await parse_body(request, CreateKeyRequest, self.s.max_body_bytes)
        if body.expires_at is not None and body.expires_at <= self._now():
            raise _field_error("expires_at", "must be in the future")
        secret, key = self._new_key(tenant.id, body.name, body.role, body.expires_at)
        await self.s.directory.create_key(
            key, audit=self._entry(request, caller, tenant.id, "key.create", key.id)
        )
        return JSONResponse({**key.to_json(), "api_key": secret}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_KEYS)
        keys = []
        for key in await self.s.directory.list_keys(tenant.id):
            described = key.to_json()
            pending = self.s.resolver.last_used(tenant.id, key.id)
            if pending is not None and (key.last_used_at is None or pending > key.last_used_at):
                described["last_used_at"] = format_timestamp(pending)
            keys.append(described)
        return JSONResponse(keys)

    async def revoke_key(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_KEYS)
        key_id = _path_id(request, "key_id")
        entry = self._entry(request, caller, tenant.id, "key.revoke", key_id)
        if not await self.s.directory.revoke_key(tenant.id, key_id, self._now(), audit=entry):
            raise problems.not_found()
        await self._changed(tenant.id)
        return Response(status_code=204)

    async def rotate_key(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_KEYS)
        body = await parse_body(request, RotateKeyRequest, self.s.max_body_bytes, allow_empty=True)
        key_id = _path_id(request, "key_id")
        old = next((k for k in await self.s.directory.list_keys(tenant.id) if k.id == key_id), None)
        if old is None:
            raise problems.not_found()
        secret, key = self._new_key(tenant.id, old.name, old.role, old.expires_at)
        until = key.created_at + timedelta(seconds=body.grace_seconds)
        entry = self._entry(request, caller, tenant.id, "key.rotate", f"{key_id} -> {key.id}")
        if not await self.s.directory.rotate_key(tenant.id, key_id, key, until, audit=entry):
            raise problems.not_found("The key does not exist or is no longer active.")
        await self._changed(tenant.id)
        return JSONResponse({**key.to_json(), "api_key": secret}, status_code=201)

    # -- usage and audit -------------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_USAGE)
        period = self._period(request)
        key = (tenant.id, str(period))
        if period == Period.containing(self.s.clock()):
            await self.s.recorder.flush()  # this process's pending tallies: reads are exact
            tallies = await self.s.counters.read(key)
        else:
            tallies = await period_tallies(self.s.ledger, self.s.counters, key)
        plan = self._plan(tenant.plan)
        report = usage_report(
            tenant_id=tenant.id,
            period=period,
            tallies=tallies,
            limit=plan.monthly_calls,
            users=await self.s.directory.count_users(tenant.id),
            max_users=effective_seat_limit(plan, tenant),
        )
        requested = request.query_params.get("format")
        if requested not in (None, "json", "csv"):
            raise _field_error("format", "must be json or csv")
        wants_csv = requested == "csv" or (
            requested is None and "text/csv" in request.headers.get("accept", "")
        )
        if wants_csv:
            return Response(
                usage_csv(report),
                media_type="text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": f'attachment; filename="usage-{tenant.id}-{period}.csv"'
                },
            )
        return JSONResponse(report)

    def _period(self, request: Request, tenant: Tenant | None = None) -> Period:
        """``?period=`` or the current one; 422 for a bad or future one, and with ``tenant``,
        404 for a month before it existed."""
        current = Period.containing(self.s.clock())
        raw = request.query_params.get("period")
        try:
            if raw is not None and not (raw.isascii() and len(raw) == len("YYYY-MM")):
                raise ValueError(raw)  # Period.parse's \d admits "٢٠٢٦-01", its $ a newline
            period = current if raw is None else Period.parse(raw)
        except ValueError:
            raise _field_error("period", "must be YYYY-MM") from None
        if period > current:
            raise _field_error("period", "must not be in the future")
        if tenant is not None and period < Period.containing(tenant.created_at.timestamp()):
            raise problems.not_found(f"The tenant did not exist in {period}.")
        return period

    async def invoice(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_BILLING)
        period = self._period(request, tenant)
        if period == Period.containing(self.s.clock()):
            await self.s.recorder.flush()  # refunds of this process, before the draft
        try:
            document = await self.s.billing.invoice(tenant, period)
        except ConfigurationError as exc:
            raise problems.service_unavailable(str(exc)) from exc
        return Response(document, media_type="application/json")

    async def invoices(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_BILLING)
        documents = await self.s.billing.list_issued(tenant)
        return Response("[" + ",".join(documents) + "]", media_type="application/json")

    def _database(self) -> Database:
        if self.s.database is None:
            raise problems.not_supported(
                "Export and import need PostgreSQL: start the gateway with a database_url."
            )
        return self.s.database

    def _claim_transfer(self, tenant_id: str) -> TransferSlot:
        """One of this process's transfer slots, or 429/503 (see ``_transfer_refusal``)."""
        try:
            return self.s.transfers.claim(tenant_id)
        except TransferBusy as exc:
            raise self._transfer_refusal(exc) from exc

    def _pace(self) -> TransferPace:
        return TransferPace(
            self.s.clock,
            window=self.s.transfer_idle_timeout,
            min_rate=self.s.transfer_min_rate,
            max_duration=self.s.transfer_max_duration,
        )

    def _transfer_refusal(self, exc: TransferBusy | StoreUnavailable) -> Problem:
        if isinstance(exc, StoreUnavailable):
            return problems.service_unavailable(str(exc))
        # A stalled transfer is cut within the idle timeout: a fair time to try again.
        retry = max(1, math.ceil(self.s.transfer_idle_timeout))
        return problems.transfer_busy(exc.detail, per_tenant=exc.per_tenant, retry_after=retry)

    async def export(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MOVE_DATA)
        database = self._database()
        slot = self._claim_transfer(tenant.id)
        try:
            await self.s.flush_tenant(tenant.id)  # the ledger holds every count seen here
            await self._audit(request, caller, tenant.id, "tenant.export")
        except BaseException:
            slot.release()
            raise
        _lift_deadline(request)  # the stream bounds its own waits, however long it runs
        return TransferStream(
            export_tenant(database, tenant.id, self._now()),
            idle_timeout=self.s.transfer_idle_timeout,
            pace=self._pace(),
            refusal=self._transfer_refusal,
            on_close=slot.release,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{tenant.id}.ndjson"'},
        )

    async def import_(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MOVE_DATA)
        database = self._database()
        body = limited_stream(request, self.s.import_max_bytes)  # 413 now if declared too large
        flags = {name: request.query_params.get(name, "false") for name in ("dry_run", "app_only")}
        for name, value in flags.items():
            if value not in ("true", "false"):
                raise _field_error(name, "must be true or false")
        slot = self._claim_transfer(tenant.id)  # before any work: a refusal costs nothing
        _lift_deadline(request)  # the import bounds its own waits, however long it runs
        try:
            result = await import_tenant(
                database,
                tenant.id,
                numbered_lines(idle_limited(body, self.s.transfer_idle_timeout, self._pace())),
                dry_run=flags["dry_run"] == "true",
                app_only=flags["app_only"] == "true",
                seat_limit=effective_seat_limit(self._plan(tenant.plan), tenant),
                check_user=checked_user,
                audit=self._entry(request, caller, tenant.id, "tenant.import"),
            )
        except LineTooLong as exc:
            raise Problem(
                413,
                "payload_too_large",
                "Line too large",
                f"Nothing was imported: line {exc.line} is {exc.reason}.",
            ) from exc
        except ImportRejected as exc:
            raise problems.import_rejected(exc.line, exc.table, exc.reason) from exc
        except TransferBusy as exc:  # another process runs one for this tenant
            raise self._transfer_refusal(exc) from exc
        finally:
            slot.release()
        if not result.summary["dry_run"]:
            await self.s.counters.forget((tenant.id, p) for p in result.ledger_periods)
        return JSONResponse(result.summary)

    async def get_webhook(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_TENANT)
        target = await self.s.directory.webhook_target(tenant.id)
        return JSONResponse({"url": target[0] if target else None})

    async def set_webhook(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        changes = self.s.events.changes  # each setting resolves a name: not in a loop
        if changes is not None and not caller.is_operator:
            wait = changes.take(tenant.id)
            if wait:
                raise problems.too_many_changes("webhook", wait)
        body = await parse_body(request, WebhookRequest, self.s.max_body_bytes)
        refused = await self.s.events.policy.refusal_of(body.url, tenant.id)
        if refused is not None:
            raise _field_error("url", refused, "The webhook URL is not allowed.")
        secret = "whsec_" + secrets.token_urlsafe(32)
        entry = self._entry(request, caller, tenant.id, "webhook.set", body.url)
        if not await self.s.directory.set_webhook(tenant.id, body.url, secret, audit=entry):
            raise problems.not_found()
        return JSONResponse({"url": body.url, "secret": secret})

    async def delete_webhook(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MANAGE_TENANT)
        entry = self._entry(request, caller, tenant.id, "webhook.delete")
        await self.s.directory.set_webhook(tenant.id, None, None, audit=entry)
        return Response(status_code=204)

    async def audit(self, request: Request) -> Response:
        _, tenant = await self._tenant(request, Action.READ_AUDIT)
        limit = _page_size(request)
        raw_before = request.query_params.get("before")
        if raw_before is not None and not _ascii_digits(raw_before, 18):
            raise _field_error("before", "must be an entry id")
        entries = await self.s.directory.list_audit(
            tenant.id, limit=limit + 1, before=int(raw_before) if raw_before else None
        )
        page = entries[:limit]
        return JSONResponse(
            {
                "items": [entry.to_json() for entry in page],
                "next_before": page[-1].id if len(entries) > limit else None,
            }
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(request.scope.get("root_path", "")))


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Problem):
        return problems.problem_response(exc)
    if isinstance(exc, Refusal):
        return problems.problem_response(problems.for_refusal(exc))
    if isinstance(exc, StoreBusy):
        return problems.problem_response(problems.lock_timeout())
    if isinstance(exc, StoreUnavailable):
        return problems.problem_response(problems.service_unavailable(str(exc)))
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            problem = Problem(405, "method_not_allowed", "Method not allowed", str(exc.detail))
        else:
            problem = problems.not_found()
        return problems.problem_response(problem)
    return problems.problem_response(
        Problem(500, "internal_error", "Internal error", "An unexpected error occurred.")
    )


_DEADLINE = "tenant_gateway.deadline"
_ON_END = "tenant_gateway.on_end"


def _lift_deadline(request: Request) -> None:
    """Take this request out of the admin deadline: it bounds each of its waits itself (a
    transfer: on its client by the idle timeout, on the store by the statement timeout)."""
    lifted = request.scope.get(_DEADLINE)
    if isinstance(lifted, asyncio.Event):
        lifted.set()


class _Deadline:
    """Answer 503 when an admin request takes longer than ``timeout`` seconds (a wedged store
    must not hold connections forever). Responses, once started, run to the end; so do
    requests that lift their deadline (``_lift_deadline``)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        scope[_DEADLINE] = lifted = asyncio.Event()
        on_end: list[Callable[[], None]] = []
        scope[_ON_END] = on_end

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, tracking_send))
        task.add_done_callback(lambda _: [end() for end in on_end])  # however it ends
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if done:
            task.result()
            return
        if started or lifted.is_set():  # a response or a transfer under way: let it finish
            await task
            return
        task.cancel()  # its clean-up (a rollback on a wedged connection) may hang: don't wait
        await asyncio.wait({task}, timeout=0.1)
        problem = problems.service_unavailable(f"The request took longer than {self.timeout} s.")
        await problems.problem_response(problem)(scope, receive, send)


def build_admin_app(
    services: Services,
    prefix: str,
    *,
    operators: OperatorAuth | None = None,
    timeout: float = 10.0,
    tenant_concurrency: int = 4,
) -> Starlette:
    """The admin API over ``services``; ``operators``: how operator tokens are verified (None:
    no operator access)."""
    api = AdminAPI(services, operators, tenant_concurrency)
    tenant = "/{tenant_id}"
    user = tenant + "/users/{user_id}"
    key = tenant + "/keys/{key_id}"
    routes = [
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/register", api.register, methods=["POST"]),
        Route("/", api.list_tenants, methods=["GET"]),
        Route(tenant, api.get_tenant, methods=["GET"]),
        Route(tenant, api.update_tenant, methods=["PATCH"]),
        Route(tenant, api.delete_tenant, methods=["DELETE"]),
        Route(tenant + "/suspend", api.suspend, methods=["POST"]),
        Route(tenant + "/resume", api.resume, methods=["POST"]),
        Route(tenant + "/plan", api.change_plan, methods=["PUT"]),
        Route(tenant + "/users", api.add_user, methods=["POST"]),
        Route(tenant + "/users", api.list_users, methods=["GET"]),
        Route(user, api.get_user, methods=["GET"]),
        Route(user, api.update_user, methods=["PATCH"]),
        Route(user, api.delete_user, methods=["DELETE"]),
        Route(tenant + "/keys", api.create_key, methods=["POST"]),
        Route(tenant + "/keys", api.list_keys, methods=["GET"]),
        Route(key, api.revoke_key, methods=["DELETE"]),
        Route(key + "/rotate", api.rotate_key, methods=["POST"]),
        Route(tenant + "/usage", api.usage, methods=["GET"]),
        Route(tenant + "/audit", api.audit, methods=["GET"]),
        Route(tenant + "/export", api.export, methods=["GET"]),
        Route(tenant + "/import", api.import_, methods=["POST"]),
        Route(tenant + "/billing/invoice", api.invoice, methods=["GET"]),
        Route(tenant + "/billing/invoices", api.invoices, methods=["GET"]),
        Route(tenant + "/webhook", api.get_webhook, methods=["GET"]),
        Route(tenant + "/webhook", api.set_webhook, methods=["PUT"]),
        Route(tenant + "/webhook", api.delete_webhook, methods=["DELETE"]),
    ]
    return Starlette(
        routes=[Mount(prefix, routes=routes)],
        middleware=[Middleware(_Deadline, timeout=timeout)],
        exception_handlers={
            Problem: _problem_handler,
            Refusal: _problem_handler,
            StoreUnavailable: _problem_handler,
            HTTPException: _problem_handler,
            Exception: _problem_handler,
        },
    )
