"""What the database says about tenant tables: discovered, never hand-listed."""

from __future__ import annotations

from graphlib import TopologicalSorter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

__all__ = ["application_tables"]

_TABLES = """
SELECT c.oid, c.relname FROM pg_policy p
JOIN pg_class c ON c.oid = p.polrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.polname = 'tenant_isolation' AND n.nspname = 'public' AND c.relname NOT LIKE 'tg\\_%'
"""
_FOREIGN_KEYS = """
SELECT conrelid AS child, confrelid AS parent FROM pg_constraint
WHERE contype = 'f' AND conrelid = ANY($1::oid[]) AND confrelid = ANY($1::oid[])
"""


async def application_tables(conn: Connection) -> list[str]:
    """The wrapped app's tables under the tenant policy, parents before children."""
    rows = await conn.fetch(_TABLES)
    names = {row["oid"]: row["relname"] for row in rows}
    graph: dict[str, set[str]] = {name: set() for name in names.values()}
    for edge in await conn.fetch(_FOREIGN_KEYS, list(names)):
        if edge["child"] != edge["parent"]:
            graph[names[edge["child"]]].add(names[edge["parent"]])
    return list(TopologicalSorter(graph).static_order())
