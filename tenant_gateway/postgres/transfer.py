"""Tenant export and import: an NDJSON stream, read in one snapshot, loaded in one transaction.

The stream: a header line, then one ``{"table": …, "row": {…}}`` line per row, parents before
children. Rows are produced by PostgreSQL itself (``row_to_json``) and loaded back through
``json_populate_record``, so every column keeps its type across the trip, whatever the app uses.

Exported: the gateway's tenant tables (profile, users, key metadata without the hash, plan
history, usage ledger, invoices, audit) and every application table under the isolation policy.
Imported: the application tables and the users (held to the rules of ``POST /{id}/users`` by the
caller's ``check_user``, and to the seat limit). The gateway's own records are a record of the
source and are skipped: keys are secrets that cannot move; invoices and plan history belong to
the source's account; the audit trail is written by the gateway only; usage feeds quotas and
invoices, so a tenant must not write its own. Moving usage between databases is the operator's
command only (``with_usage``), every value checked. The target's audit gets one
``tenant.import`` entry with the counts, in the import's own transaction.

This module holds what both directions share: the format and the tables' descriptions. The
export is ``transfer_export``, the import ``transfer_import``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

__all__ = ["FORMAT", "GATEWAY_TABLES", "VERSION", "Table", "describe", "header_rows"]

FORMAT = "tenant-gateway-export"
VERSION = 1

# gateway table → (column holding the tenant id, importable, columns never exported);
# tg_usage is imported by the operator's command only (``with_usage``)
GATEWAY_TABLES: dict[str, tuple[str, bool, frozenset[str]]] = {
    "tg_tenants": ("id", False, frozenset({"webhook_secret"})),
    "tg_users": ("tenant_id", True, frozenset()),
    "tg_api_keys": ("tenant_id", False, frozenset({"key_hash"})),
    "tg_plan_changes": ("tenant_id", False, frozenset()),
    "tg_usage": ("tenant_id", False, frozenset()),
    "tg_invoices": ("tenant_id", False, frozenset()),
    "tg_audit": ("tenant_id", False, frozenset()),
}

_FOREIGN_KEYS = """
SELECT confrelid::regclass::text AS parent,
  ARRAY(SELECT attname FROM unnest(conkey) WITH ORDINALITY k(n, o)
        JOIN pg_attribute ON attrelid = conrelid AND attnum = k.n ORDER BY o) AS child_columns,
  ARRAY(SELECT attname FROM unnest(confkey) WITH ORDINALITY k(n, o)
        JOIN pg_attribute ON attrelid = confrelid AND attnum = k.n ORDER BY o) AS parent_columns
FROM pg_constraint WHERE contype = 'f' AND conrelid = $1::regclass
"""


@dataclass
class Table:
    """What a transfer needs to know of one table, read from the catalogue (``describe``)."""

    name: str
    tenant_column: str
    columns: list[str]
    insertable: list[str]
    """Columns an INSERT may set (identity and generated ones are left to the database)."""
    key: list[str]
    """Primary key columns other than the tenant column."""
    text_key: bool
    parents: list[tuple[list[str], str, list[str]]] = field(default_factory=list)
    """Foreign keys: (child columns, parent table, parent columns)."""


async def describe(conn: Connection, name: str, tenant_column: str) -> Table:
    """The table's columns, primary key and foreign keys; ``tenant_column`` holds the tenant id."""
    columns = await conn.fetch(
        "SELECT attname, attidentity <> '' OR attgenerated <> '' AS automatic"
        " FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum",
        name,
    )
    key = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
        " WHERE i.indrelid = $1::regclass AND i.indisprimary",
        name,
    )
    own_key = [row for row in key if row["attname"] != tenant_column]
    table = Table(
        name=name,
        tenant_column=tenant_column,
        columns=[row["attname"] for row in columns],
        insertable=[row["attname"] for row in columns if not row["automatic"]],
        key=[row["attname"] for row in own_key],
        text_key=len(own_key) == 1 and own_key[0]["type"] == "text",
    )
    for fk in await conn.fetch(_FOREIGN_KEYS, name):
        table.parents.append((list(fk["child_columns"]), fk["parent"], list(fk["parent_columns"])))
    return table


def header_rows(line: bytes) -> int | None:
    """The rows a stream's header line announces in all (None: not a header that says)."""
    try:
        header = json.loads(line)
        rows = sum(table["rows"] for table in header["tables"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return rows if isinstance(rows, int) and header.get("format") == FORMAT else None
