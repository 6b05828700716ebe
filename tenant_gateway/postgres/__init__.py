"""PostgreSQL: the pool, migrations, the tenant transaction and the directory store."""

from tenant_gateway.postgres.database import (
    RUNTIME_ROLE,
    TENANT_SETTING,
    Database,
    isolate_table,
    tenant_transaction,
)
from tenant_gateway.postgres.directory import PostgresDirectory

__all__ = [
    "RUNTIME_ROLE",
    "TENANT_SETTING",
    "Database",
    "PostgresDirectory",
    "isolate_table",
    "tenant_transaction",
]
