"""The gateway's services over its stores, shared by the middleware and the admin sub-app.

``Services.create`` wires them from the settings (each store chosen by ``stores.open_stores``);
``start``/``stop`` open and close them; a background loop flushes what is batched in memory
(route tallies, refunds, key last-use times, ledger snapshots) every ``usage_flush_interval``
seconds, another closes last month's invoices once they are due.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from tenant_gateway.background import repeat
from tenant_gateway.billing import Billing
from tenant_gateway.client_limits import ClientLimiter, limiter_for
from tenant_gateway.clock import Clock
from tenant_gateway.directory import TenantDirectory
from tenant_gateway.events import EventDispatcher
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.ledger import UsageLedger
from tenant_gateway.models import API_ROLES
from tenant_gateway.netpolicy import WebhookPolicy
from tenant_gateway.plans import PlanCatalog
from tenant_gateway.postgres.database import Database
from tenant_gateway.propagation import Invalidator
from tenant_gateway.quota import CounterStore
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.urls import limits_storage
from tenant_gateway.resolver import KeyResolver
from tenant_gateway.settings import Settings
from tenant_gateway.stores import open_invalidator, open_stores
from tenant_gateway.transfers import TransferSlots
from tenant_gateway.usage import UsageRecorder

__all__ = ["MISSING_PLAN_LISTED", "Services"]

logger = logging.getLogger("tenant_gateway")

MISSING_PLAN_LISTED = 20
"""How many tenants on a plan the catalogue lacks the start-up warning names (and counts the
rest)."""


@dataclass(slots=True)
class Services:
    settings: Settings
    plans: PlanCatalog
    database: Database | None
    directory: TenantDirectory
    ledger: UsageLedger
    counters: CounterStore
    recorder: UsageRecorder
    resolver: KeyResolver
    invalidator: Invalidator
    events: EventDispatcher
    billing: Billing
    clock: Clock
    signup_limiter: ClientLimiter | None
    """Sign-ups per client address; in Redis when there is one (one limit for every worker)."""
    plan_change_limiter: ClientLimiter | None
    """Plan changes per tenant id (operators' are not counted): each is a transaction and a
    plan-history row. In Redis when there is one, like sign-ups."""
    transfers: TransferSlots
    flushed_at: float = 0.0
    """When a flush last completed every step (at start: the start); ``/metrics`` reports
    how long ago."""
    flush_failures: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("counters", "ledger", "key_use"), 0)
    )
    """Flush steps that failed, by step (``/metrics``)."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        stores = open_stores(settings)
        clock = settings.clock
        resolver = KeyResolver(
            stores.directory,
            clock,
            ttl=settings.key_cache_ttl,
            long_ttl=settings.key_cache_long_ttl,
            max_entries=settings.key_cache_size,
            api_roles=API_ROLES,
            # Failed authentications are counted in process, inline: no I/O on a flood's path.
            failures=limiter_for(settings.auth_failure_rate, "auth_failure_rate", clock),
        )
        return cls(
            settings=settings,
            plans=settings.plans,
            database=stores.database,
            directory=stores.directory,
            ledger=stores.ledger,
            counters=stores.counters,
            recorder=UsageRecorder(stores.counters),
            resolver=resolver,
            invalidator=open_invalidator(settings, resolver),
            events=EventDispatcher(
                stores.ledger,
                stores.directory,
                clock,
                hook=settings.on_quota_threshold,
                policy=WebhookPolicy(settings.webhook_allowed_networks),
                attempt_timeout=settings.webhook_attempt_timeout,
                sleep=settings.sleep,
            ),
            billing=Billing(
                directory=stores.directory,
                ledger=stores.ledger,
                counters=stores.counters,
                invoices=stores.invoices,
                plans=settings.plans,
                clock=clock,
                close_grace_seconds=settings.invoice_close_grace,
            ),
            clock=clock,
            signup_limiter=_shared_limiter(settings, settings.signup_rate, "signup_rate"),
            plan_change_limiter=_shared_limiter(
                settings, settings.plan_change_rate, "plan_change_rate"
            ),
            transfers=TransferSlots(settings.transfer_concurrency),
        )

    async def start(self) -> None:
        """Open pools (applying migrations), check the counters, start the background work."""
        await self.directory.start()
        await self._warn_of_missing_plans()
        await self.counters.ping()
        self.flushed_at = self.clock()
        self._tasks = [
            asyncio.create_task(
                repeat("flush", self.flush, self.settings.usage_flush_interval, wait_first=True)
            ),
            # Closing last month's invoices: a no-op but once a month.
            asyncio.create_task(
                repeat(
                    "closing invoices",
                    self.billing.close_due,
                    max(self.settings.usage_flush_interval, 10.0),
                    wait_first=False,
                )
            ),
            asyncio.create_task(self.invalidator.run()),
            asyncio.create_task(self.events.run()),
        ]
        await self.invalidator.listening()  # else the first keys served would load twice

    async def _warn_of_missing_plans(self) -> None:
        """One warning listing the tenants on plans the catalogue does not have (removed from
        the plans file): their calls answer 503 ``plan_not_configured`` until it has them."""
        found, total = await self.directory.tenants_on_other_plans(
            list(self.plans), limit=MISSING_PLAN_LISTED
        )
        if total:
            listed = ", ".join(f"{tenant_id} ({plan!r})" for tenant_id, plan in found)
            more = f" and {total - len(found)} more" if total > len(found) else ""
            logger.warning(
                "%d tenant(s) are on plans the plans catalogue does not have; their calls answer"
                " 503 plan_not_configured until those plans are added to the plans file (or the"
                " tenants moved to another plan): %s%s",
                total,
                listed,
                more,
            )

    async def stop(self) -> None:
        """Stop the background work, flush everything batched, close the connections."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a stuck task must not hold the process hostage
            done, stuck = await asyncio.wait(self._tasks, timeout=5.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("background task had failed: %r", task.exception())
            for task in stuck:
                logger.error("background task did not stop within 5 s: %r", task)
        self._tasks = []
        await self.events.close()
        try:
            await self.flush()
        except StoreUnavailable as exc:
            logger.error("usage could not be flushed at shutdown: %s", exc)
        await self.invalidator.close()
        for limiter in (self.signup_limiter, self.plan_change_limiter):
            if limiter is not None:
                await limiter.close()
        await self.counters.close()
        await self.directory.close()

    async def readiness(self) -> dict[str, str]:
        """Each backing store: "ok", or why it is not (bounded by the stores' own timeouts)."""
        checks: dict[str, str] = {}
        if self.database is not None:
            try:
                async with self.database.connection() as conn:
                    await conn.fetchval("SELECT 1")
                checks["postgres"] = "ok"
            except StoreUnavailable as exc:
                checks["postgres"] = exc.reason
        if isinstance(self.counters, RedisCounters):
            try:
                await self.counters.ping()
                checks["redis"] = "ok"
            except StoreUnavailable as exc:
                checks["redis"] = exc.reason
        return checks

    async def flush(self) -> None:
        """Route tallies and refunds → counters; counter snapshots → ledger; key last use.
        Each step runs whether the others failed or not (Redis away must not stop key use
        reaching PostgreSQL); the first failure is raised once all have run."""
        failures: list[Exception] = []
        for name, step in (
            ("counters", self.recorder.flush),
            ("ledger", self._flush_ledger),
            ("key_use", self._flush_key_use),
        ):
            try:
                await step()
            except Exception as exc:
                failures.append(exc)
                self.flush_failures[name] += 1
        if failures:
            raise failures[0]
        self.flushed_at = self.clock()

    async def flush_tenant(self, tenant_id: str) -> None:
        """What a transfer of one tenant needs: the pending tallies in the counters, and that
        tenant's snapshots in the ledger. The other tenants' snapshots wait for the background
        flush, so a tenant asking for transfers in a loop cannot make every worker write
        everyone's usage each time."""
        await self.recorder.flush()
        await self._flush_ledger(tenant_id)

    async def _flush_ledger(self, tenant_id: str | None = None) -> None:
        dirty = self.counters.drain_dirty()
        if tenant_id is not None:
            others = {key for key in dirty if key[0] != tenant_id}
            self.counters.mark_dirty(others)
            dirty -= others
        try:
            await self.ledger.write(await self.counters.snapshots(dirty))
        except BaseException:  # whatever failed, these keys still owe the ledger a snapshot
            self.counters.mark_dirty(dirty)
            raise

    async def _flush_key_use(self) -> None:
        used = self.resolver.drain_last_used()
        try:
            await self.directory.touch_keys(used)
        except BaseException:
            self.resolver.keep_last_used(used)
            raise


def _shared_limiter(settings: Settings, rate: str | None, name: str) -> ClientLimiter | None:
    """A limiter every worker shares through Redis when there is one."""
    return limiter_for(
        rate,
        name,
        settings.clock,
        storage=limits_storage(settings.redis_url) if settings.redis_url else None,
        key_prefix=settings.redis_key_prefix,
    )
