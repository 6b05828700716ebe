"""Tenant isolation for application tables: row-level security on ``tenant_id``.

``isolate_table`` puts a table under the policy the gateway's own tables have, and grants the
runtime role (``RUNTIME_ROLE``, what ``tenant_transaction()`` runs as) what it needs on the
table: plain DML, and ``USAGE`` on the sequences its ``serial`` columns own (an identity
column's sequence needs no grant). ``is_isolated`` reads the same from the catalogue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenant_gateway.exceptions import ConfigurationError
from tenant_gateway.postgres.database import RUNTIME_ROLE, TENANT_SETTING, is_identifier

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

__all__ = ["is_isolated", "isolate_table"]

_CONDITION = f"tenant_id = (SELECT current_setting('{TENANT_SETTING}', true))"
# The condition as PostgreSQL prints it back (pg_get_expr, version 15). Should another version
# print it otherwise, a table merely looks not isolated yet and isolate_table runs its DDL.
_CONDITION_STORED = (
    f"(tenant_id = ( SELECT current_setting('{TENANT_SETTING}'::text, true) AS current_setting))"
)
# The sequences table {0}'s columns own (serial, or OWNED BY): nextval needs USAGE on them.
# An identity column's sequence is internal to it (deptype 'i') and needs no privilege.
_OWNED_SEQUENCES = """
FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = {0} AND d.deptype = 'a'
"""
_ISOLATED = f"""
SELECT c.relrowsecurity AND c.relforcerowsecurity
  AND EXISTS (SELECT 1 FROM pg_policy p
              WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation' AND p.polcmd = '*'
                AND p.polpermissive AND p.polroles = '{{0}}'
                AND pg_get_expr(p.polqual, p.polrelid) = $2
                AND pg_get_expr(p.polwithcheck, p.polrelid) = $2)
  AND has_table_privilege($3, c.oid, 'SELECT') AND has_table_privilege($3, c.oid, 'INSERT')
  AND has_table_privilege($3, c.oid, 'UPDATE') AND has_table_privilege($3, c.oid, 'DELETE')
  AND NOT EXISTS (SELECT 1 {_OWNED_SEQUENCES.format("c.oid")}
                    AND NOT has_sequence_privilege($3, s.oid, 'USAGE'))
FROM pg_class c WHERE c.oid = to_regclass($1)
"""
_SEQUENCE_NAMES = f"SELECT s.oid::regclass::text {_OWNED_SEQUENCES.format('to_regclass($1)')}"


async def is_isolated(conn: Connection, table: str) -> bool:
    """Whether ``table`` is already as ``isolate_table`` leaves it (read from the catalogue:
    no lock on the table)."""
    return bool(await conn.fetchval(_ISOLATED, table, _CONDITION_STORED, RUNTIME_ROLE))


async def isolate_table(conn: Connection, table: str) -> None:
    """Put an application table with a ``tenant_id text`` column under tenant isolation.

    Enables and forces row-level security, installs a policy whose USING and WITH CHECK both
    compare ``tenant_id`` with the tenant context (read once per statement), and grants the
    runtime role plain DML on it, and USAGE on the sequences of its ``serial`` columns. With
    no context set, no row is visible or writable. Idempotent, and a table already isolated
    gets no DDL at all (``ALTER TABLE`` waits for every reader of the table, and every later
    query waits behind it); run it again after adding a ``serial`` column. Call it from the
    application's own migration, under a lock timeout (``schema.run_ddl`` does both).
    """
    if not is_identifier(table):
        raise ConfigurationError(f"table name {table!r} must be a plain lower-case identifier")
    if await is_isolated(conn, table):
        return
    condition = _CONDITION
    # Names as the server quotes them (regclass output): safe to put into the statement.
    sequences = [row[0] for row in await conn.fetch(_SEQUENCE_NAMES, table)]
    grant_sequences = (
        f"GRANT USAGE ON SEQUENCE {', '.join(sequences)} TO {RUNTIME_ROLE};" if sequences else ""
    )
    await conn.execute(
        f"""
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
        DROP POLICY IF EXISTS tenant_isolation ON {table};
        CREATE POLICY tenant_isolation ON {table} USING ({condition}) WITH CHECK ({condition});
        GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {RUNTIME_ROLE};
        {grant_sequences}
        """
    )
