"""Admin handlers that move a tenant's data: export and import (NDJSON, streamed)."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tenant_gateway import problems
from tenant_gateway.admin.base import AdminHandlers, field_error
from tenant_gateway.admin.deadline import lift_deadline
from tenant_gateway.admin.schemas import checked_user
from tenant_gateway.admin.streaming import TransferStream, idle_limited
from tenant_gateway.bodies import limited_stream
from tenant_gateway.exceptions import ImportRejected, Problem, StoreUnavailable, TransferBusy
from tenant_gateway.models import Action, effective_seat_limit
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.transfer_export import export_tenant
from tenant_gateway.postgres.transfer_import import LineTooLong, import_tenant, numbered_lines
from tenant_gateway.transfers import TransferPace, TransferSlot

__all__ = ["TransferHandlers"]


class TransferHandlers(AdminHandlers):
    """Export and import, each under the transfer limits and its own pace."""

    def _database(self) -> Database:
        if self.services.database is None:
            raise problems.not_supported(
                "Export and import need PostgreSQL: start the gateway with a database_url."
            )
        return self.services.database

    def _claim_transfer(self, tenant_id: str) -> TransferSlot:
        """One of this process's transfer slots, or 429/503 (see ``_transfer_refusal``)."""
        try:
            return self.services.transfers.claim(tenant_id)
        except TransferBusy as exc:
            raise self._transfer_refusal(exc) from exc

    def _pace(self) -> TransferPace:
        return TransferPace(
            self.services.clock,
            window=self.settings.transfer_idle_timeout,
            min_rate=self.settings.transfer_min_rate,
            max_duration=self.settings.transfer_max_duration,
        )

    def _transfer_refusal(self, exc: TransferBusy | StoreUnavailable) -> Problem:
        if isinstance(exc, StoreUnavailable):
            return problems.service_unavailable(str(exc))
        # A stalled transfer is cut within the idle timeout: a fair time to try again.
        retry = max(1, math.ceil(self.settings.transfer_idle_timeout))
        return problems.transfer_busy(exc.detail, per_tenant=exc.per_tenant, retry_after=retry)

    async def export(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MOVE_DATA)
        database = self._database()
        slot = self._claim_transfer(tenant.id)
        try:
            await self.services.flush_tenant(tenant.id)  # the ledger holds every count seen here
            await self._audit(request, caller, tenant.id, "tenant.export")
        except BaseException:
            slot.release()
            raise
        lift_deadline(request)  # the stream bounds its own waits, however long it runs
        return TransferStream(
            export_tenant(database, tenant.id, self._now()),
            idle_timeout=self.settings.transfer_idle_timeout,
            pace=self._pace(),
            refusal=self._transfer_refusal,
            on_close=slot.release,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{tenant.id}.ndjson"'},
        )

    async def import_(self, request: Request) -> Response:
        caller, tenant = await self._tenant(request, Action.MOVE_DATA)
        database = self._database()
        body = limited_stream(
            request, self.settings.import_max_bytes
        )  # 413 now if declared too large
        flags = {name: request.query_params.get(name, "false") for name in ("dry_run", "app_only")}
        for name, value in flags.items():
            if value not in ("true", "false"):
                raise field_error(name, "must be true or false")
        slot = self._claim_transfer(tenant.id)  # before any work: a refusal costs nothing
        lift_deadline(request)  # the import bounds its own waits, however long it runs
        try:
            result = await import_tenant(
                database,
                tenant.id,
                numbered_lines(
                    idle_limited(body, self.settings.transfer_idle_timeout, self._pace())
                ),
                dry_run=flags["dry_run"] == "true",
                app_only=flags["app_only"] == "true",
                seat_limit=effective_seat_limit(self._tenant_plan(tenant), tenant),
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
            await self.services.counters.forget((tenant.id, p) for p in result.ledger_periods)
        return JSONResponse(result.summary)
