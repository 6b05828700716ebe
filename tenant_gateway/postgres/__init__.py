"""PostgreSQL: the pool, migrations, the tenant transaction and the directory store."""

from tenant_gateway.postgres.database import (
    RUNTIME_ROLE,
    TENANT_SETTING,
    Database,
    tenant_transaction,
)
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.postgres.isolation import isolate_table

__all__ = [
    "RUNTIME_ROLE",
    "TENANT_SETTING",
    "Database",
    "PostgresDirectory",
    "isolate_table",
    "tenant_transaction",
]
