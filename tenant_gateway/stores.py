"""The stores a gateway's URLs name, chosen in one place.

``database_url`` (``postgresql://…``) puts the tenant directory, the usage ledger and the
invoices in PostgreSQL, else they live in process memory; ``redis_url`` (``redis://…``,
``rediss://…``, a cluster's ``redis+cluster://…`` or a Sentinel service's ``redis+sentinel://…``:
``redis/urls.py``) puts the usage counters and the cross-process invalidation in Redis, else
they are in process. Each of the two is independent of the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenant_gateway.directory import MemoryDirectory, TenantDirectory
from tenant_gateway.invoices import InvoiceStore, MemoryInvoices
from tenant_gateway.ledger import MemoryLedger, UsageLedger
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.postgres.invoices import PostgresInvoices
from tenant_gateway.postgres.ledger import PostgresLedger
from tenant_gateway.propagation import Invalidator, KeyCache
from tenant_gateway.quota import CounterStore, MemoryCounters
from tenant_gateway.redis.cluster_invalidation import ClusterInvalidator
from tenant_gateway.redis.connect import open_counters
from tenant_gateway.redis.invalidation import RedisInvalidator
from tenant_gateway.redis.urls import check_redis_url
from tenant_gateway.settings import Settings

__all__ = ["Stores", "open_invalidator", "open_stores"]


@dataclass(frozen=True, slots=True)
class Stores:
    database: Database | None
    """The PostgreSQL pool, when there is one (transfers and readiness use it directly)."""
    directory: TenantDirectory
    ledger: UsageLedger
    invoices: InvoiceStore
    counters: CounterStore


def open_stores(settings: Settings) -> Stores:
    """The stores ``settings`` names; nothing connects until the services start."""
    database: Database | None = None
    directory: TenantDirectory
    ledger: UsageLedger
    invoices: InvoiceStore
    if settings.database_url:
        database = Database(
            settings.database_url,
            transfer_pool_size=settings.transfer_concurrency,
            transfer_statement_timeout=settings.admin_timeout,  # a transfer's waits on the store
        )
        directory, ledger = PostgresDirectory(database), PostgresLedger(database)
        invoices = PostgresInvoices(database)
    else:
        directory, ledger, invoices = MemoryDirectory(), MemoryLedger(), MemoryInvoices()
    counters: CounterStore
    if settings.redis_url:
        counters = open_counters(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            hydrate_from=ledger.read,
            clock=settings.clock,
        )
    else:
        counters = MemoryCounters(hydrate_from=ledger.read)
    return Stores(database, directory, ledger, invoices, counters)


def open_invalidator(settings: Settings, cache: KeyCache) -> Invalidator:
    """How a change reaches every process's key cache: Redis pub/sub, or this process only (a
    directory in memory is this process's alone; a database without Redis may be shared)."""
    if not settings.database_url:
        return Invalidator(cache, sole_directory=True)
    if settings.redis_url:
        channel = f"{settings.redis_key_prefix}invalidate"
        if check_redis_url(settings.redis_url) is not None:  # a cluster: sharded pub/sub
            # It sends no heartbeats, so the key cache keeps its short TTL on a cluster.
            return ClusterInvalidator(cache, settings.redis_url, channel=channel)
        return RedisInvalidator(
            cache,
            settings.redis_url,
            channel=channel,
            clock=settings.clock,
            heartbeat=settings.key_cache_ttl / 4,  # several confirmations per short TTL
        )
    return Invalidator(cache)
