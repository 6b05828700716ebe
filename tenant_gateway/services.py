"""The gateway's stores and background work, shared by the middleware and the admin sub-app.

``Services.create`` picks each store from its URL (none → the embedded in-memory one);
``start``/``stop`` open and close them; a background loop flushes what is batched in memory
(route tallies, refunds, key last-use times, ledger snapshots) every ``flush_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from tenant_gateway.billing import Billing
from tenant_gateway.client_limits import ClientLimiter
from tenant_gateway.clock import Clock
from tenant_gateway.directory import MemoryDirectory, TenantDirectory
from tenant_gateway.events import EventDispatcher, QuotaHook
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.invoices import InvoiceStore, MemoryInvoices
from tenant_gateway.ledger import MemoryLedger, UsageLedger
from tenant_gateway.models import API_ROLES
from tenant_gateway.netpolicy import WebhookPolicy
from tenant_gateway.plans import PlanCatalog
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.postgres.invoices import PostgresInvoices
from tenant_gateway.postgres.ledger import PostgresLedger
from tenant_gateway.propagation import Invalidator
from tenant_gateway.quota import CounterStore, MemoryCounters
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.invalidation import RedisInvalidator
from tenant_gateway.resolver import KeyResolver
from tenant_gateway.transfers import TransferSlots
from tenant_gateway.usage import UsageRecorder

__all__ = ["Services"]

logger = logging.getLogger("tenant_gateway")


@dataclass(slots=True)
class Services:
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
    allow_signup: bool
    max_body_bytes: int
    flush_interval: float
    import_max_bytes: int = 256 * 1024 * 1024
    signup_limiter: ClientLimiter | None = None
    signup_plans: frozenset[str] | None = None
    """The plans self-service sign-up may choose (None: all)."""
    plan_change_limiter: ClientLimiter | None = None
    """Plan changes per tenant id (operators' are not counted)."""
    transfers: TransferSlots = field(default_factory=lambda: TransferSlots(2))
    transfer_idle_timeout: float = 10.0
    """How long an export may wait for its client to read, an import for it to send."""
    transfer_min_rate: int = 1024
    """Bytes a second a transfer's client must keep up, averaged over the idle timeout."""
    transfer_max_duration: float = 3600.0
    """Seconds a transfer may last at most, however fast it moves."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        *,
        plans: PlanCatalog,
        database_url: str | None,
        redis_url: str | None,
        redis_key_prefix: str,
        clock: Clock,
        allow_signup: bool,
        max_body_bytes: int,
        flush_interval: float,
        key_cache_ttl: float,
        key_cache_size: int,
        on_quota_threshold: QuotaHook | None,
        invoice_close_grace: float = 60.0,
        signup_limiter: ClientLimiter | None = None,
        signup_plans: frozenset[str] | None = None,
        auth_failures: ClientLimiter | None = None,
        plan_change_limiter: ClientLimiter | None = None,
        transfer_concurrency: int = 2,
        transfer_idle_timeout: float = 10.0,
        transfer_min_rate: int = 1024,
        transfer_max_duration: float = 3600.0,
        transfer_statement_timeout: float | None = None,
        webhook_allowed_networks: Sequence[str] = (),
    ) -> Services:
        database = (
            Database(
                database_url,
                transfer_pool_size=transfer_concurrency,
                transfer_statement_timeout=transfer_statement_timeout,
            )
            if database_url
            else None
        )
        directory: TenantDirectory
        ledger: UsageLedger
        invoices: InvoiceStore
        if database is not None:
            directory, ledger = PostgresDirectory(database), PostgresLedger(database)
            invoices = PostgresInvoices(database)
        else:
            directory, ledger, invoices = MemoryDirectory(), MemoryLedger(), MemoryInvoices()
        counters: CounterStore = (
            RedisCounters(
                redis_url, key_prefix=redis_key_prefix, hydrate_from=ledger.read, clock=clock
            )
            if redis_url
            else MemoryCounters(hydrate_from=ledger.read)
        )
        resolver = KeyResolver(
            directory,
            clock,
            ttl=key_cache_ttl,
            max_entries=key_cache_size,
            api_roles=API_ROLES,
            failures=auth_failures,
        )
        invalidator = (
            RedisInvalidator(resolver, redis_url, channel=f"{redis_key_prefix}invalidate")
            if redis_url
            else Invalidator(resolver)
        )
        return cls(
            plans=plans,
            database=database,
            directory=directory,
            ledger=ledger,
            counters=counters,
            recorder=UsageRecorder(counters),
            resolver=resolver,
            invalidator=invalidator,
            events=EventDispatcher(
                ledger,
                directory,
                clock,
                hook=on_quota_threshold,
                policy=WebhookPolicy(webhook_allowed_networks),
            ),
            billing=Billing(
                directory=directory,
                ledger=ledger,
                counters=counters,
                invoices=invoices,
                plans=plans,
                clock=clock,
                close_grace_seconds=invoice_close_grace,
            ),
            clock=clock,
            allow_signup=allow_signup,
            max_body_bytes=max_body_bytes,
            flush_interval=flush_interval,
            signup_limiter=signup_limiter,
            signup_plans=signup_plans,
            plan_change_limiter=plan_change_limiter,
            transfers=TransferSlots(transfer_concurrency),
            transfer_idle_timeout=transfer_idle_timeout,
            transfer_min_rate=transfer_min_rate,
            transfer_max_duration=transfer_max_duration,
        )

    async def start(self) -> None:
        """Open pools (applying migrations), check the counters, start the background work."""
        await self.directory.start()
        await self.counters.ping()
        self._tasks = [
            asyncio.create_task(self._flush_forever()),
            asyncio.create_task(self._close_periods_forever()),
            asyncio.create_task(self.invalidator.run()),
            asyncio.create_task(self.events.run()),
        ]

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
        for step in (self.recorder.flush, self._flush_ledger, self._flush_key_use):
            try:
                await step()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

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

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except StoreUnavailable as exc:
                logger.warning("flush postponed: %s", exc)
            except Exception:  # keep flushing whatever went wrong once
                logger.exception("flush failed")

    async def _close_periods_forever(self) -> None:
        """Close last month's invoices once it is due (a no-op but once a month)."""
        while True:
            try:
                await self.billing.close_due()
            except StoreUnavailable as exc:
                logger.warning("closing invoices postponed: %s", exc)
            except Exception:
                logger.exception("closing invoices failed")
            await asyncio.sleep(max(self.flush_interval, 10.0))
