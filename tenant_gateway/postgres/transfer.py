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
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from tenant_gateway.clock import format_timestamp
from tenant_gateway.exceptions import ImportRejected
from tenant_gateway.keys import ID_MAX_LENGTH
from tenant_gateway.models import AuditEntry
from tenant_gateway.postgres.catalog import application_tables
from tenant_gateway.postgres.database import (
    OWNER_ROLE,
    RUNTIME_ROLE,
    Database,
    as_owner,
    as_tenant,
    lock_transfer,
)
from tenant_gateway.postgres.directory import insert_audit
from tenant_gateway.tallies import MAX_TALLY, field_name

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

__all__ = [
    "FORMAT",
    "MAX_LINE_BYTES",
    "VERSION",
    "ImportResult",
    "LineTooLong",
    "UserCheck",
    "export_tenant",
    "import_tenant",
    "numbered_lines",
]

FORMAT = "tenant-gateway-export"
VERSION = 1
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# gateway table → (column holding the tenant id, importable, columns never exported);
# tg_usage is imported by the operator's command only (``with_usage``)
_GATEWAY: dict[str, tuple[str, bool, frozenset[str]]] = {
    "tg_tenants": ("id", False, frozenset({"webhook_secret"})),
    "tg_users": ("tenant_id", True, frozenset()),
    "tg_api_keys": ("tenant_id", False, frozenset({"key_hash"})),
    "tg_plan_changes": ("tenant_id", False, frozenset()),
    "tg_usage": ("tenant_id", False, frozenset()),
    "tg_invoices": ("tenant_id", False, frozenset()),
    "tg_audit": ("tenant_id", False, frozenset()),
}

UserCheck = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""Holds an imported user row to the rules of adding a user: answers the columns to store
instead (``email``, ``role``), or raises ``ValueError`` naming what is wrong."""


_FOREIGN_KEYS = """
SELECT confrelid::regclass::text AS parent,
  ARRAY(SELECT attname FROM unnest(conkey) WITH ORDINALITY k(n, o)
        JOIN pg_attribute ON attrelid = conrelid AND attnum = k.n ORDER BY o) AS child_columns,
  ARRAY(SELECT attname FROM unnest(confkey) WITH ORDINALITY k(n, o)
        JOIN pg_attribute ON attrelid = confrelid AND attnum = k.n ORDER BY o) AS parent_columns
FROM pg_constraint WHERE contype = 'f' AND conrelid = $1::regclass
"""
_ADD_USAGE = (
    " ON CONFLICT (tenant_id, period, field) DO UPDATE SET value = tg_usage.value + EXCLUDED.value"
)


class LineTooLong(ImportRejected):
    """A line longer than the limit (a guard against a hostile "2 GB line")."""


MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest line an import accepts (one row; a larger one is refused, 413 over HTTP)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    summary: dict[str, Any]
    """What the caller reports: rows imported and skipped per table, ``dry_run``."""
    ledger_periods: list[str]
    """The periods whose usage the import added to: live counters for them must be dropped
    (``CounterStore.forget``) so the next call restores them from the ledger."""


async def numbered_lines(
    chunks: AsyncIterator[bytes], max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[tuple[int, bytes]]:
    """Split a byte stream into numbered lines without ever holding more than one line."""
    buffer = b""
    number = 0
    async for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            number += 1
            if end > max_line_bytes:
                raise LineTooLong(number, None, f"longer than the {max_line_bytes}-byte line limit")
            yield number, buffer[:end]
            buffer = buffer[end + 1 :]
        if len(buffer) > max_line_bytes:
            raise LineTooLong(number + 1, None, f"longer than the {max_line_bytes}-byte line limit")
    if buffer:
        yield number + 1, buffer


@dataclass
class _Table:
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


async def _describe(conn: Connection, name: str, tenant_column: str) -> _Table:
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
    table = _Table(
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


def _select(table: _Table, excluded: frozenset[str], *, scoped_by_policy: bool) -> str:
    columns = ", ".join(f'"{c}"' for c in table.columns if c not in excluded)
    where = "" if scoped_by_policy else f' WHERE "{table.tenant_column}" = $1'
    order = ", ".join(f'"{c}"' for c in table.key) or "1"
    rows = f'SELECT {columns} FROM "{table.name}"{where} ORDER BY {order}'
    return f"SELECT row_to_json(r)::text FROM ({rows}) r"


EXPORT_CHUNK_BYTES = 64 * 1024
"""Lines are sent in chunks of about this size: one send per row cost the event loop that
every other tenant's requests share more than reading the rows did."""


async def export_tenant(
    database: Database, tenant_id: str, now: datetime
) -> AsyncGenerator[bytes, None]:
    """The tenant's data as NDJSON, read in one repeatable-read snapshot, row by row, sent in
    chunks of whole lines."""
    async with aclosing(_export_lines(database, tenant_id, now)) as lines:
        header = await anext(lines, None)
        if header is None:
            return
        yield header  # alone: a transfer refused at its start shows before any row is read
        pending: list[bytes] = []
        size = 0
        async for line in lines:
            pending.append(line)
            size += len(line)
            if size >= EXPORT_CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)


async def _export_lines(
    database: Database, tenant_id: str, now: datetime
) -> AsyncGenerator[bytes, None]:
    async with database.transfer_connection() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await lock_transfer(conn, tenant_id)
            await as_owner(conn)
            gateway = [
                await _describe(conn, name, column) for name, (column, _, _) in _GATEWAY.items()
            ]
            app_names = await application_tables(conn)
            app = [await _describe(conn, name, "tenant_id") for name in app_names]
            counts: dict[str, int] = {}
            for table in gateway:
                counts[table.name] = await conn.fetchval(
                    f'SELECT count(*) FROM "{table.name}" WHERE "{table.tenant_column}" = $1',
                    tenant_id,
                )
            await as_tenant(conn, tenant_id)
            for table in app:
                counts[table.name] = await conn.fetchval(f'SELECT count(*) FROM "{table.name}"')
            header = {
                "format": FORMAT,
                "version": VERSION,
                "source_tenant": tenant_id,
                "exported_at": format_timestamp(now),
                "tables": [
                    {
                        "name": t.name,
                        "rows": counts[t.name],
                        "kind": "gateway" if t.name in _GATEWAY else "application",
                    }
                    for t in gateway + app
                ],
            }
            yield json.dumps(header, separators=(",", ":")).encode() + b"\n"
            await as_owner(conn)
            for table in gateway:
                excluded = _GATEWAY[table.name][2]
                query = _select(table, excluded, scoped_by_policy=False)
                prefix = b'{"table":"' + table.name.encode() + b'","row":'
                async for record in conn.cursor(query, tenant_id, prefetch=500):
                    yield prefix + record[0].encode() + b"}\n"
            await as_tenant(conn, tenant_id)
            for table in app:
                query = _select(table, frozenset(), scoped_by_policy=True)
                prefix = b'{"table":"' + table.name.encode() + b'","row":'
                async for record in conn.cursor(query, prefetch=500):
                    yield prefix + record[0].encode() + b"}\n"


def _parse(line_number: int, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ImportRejected(line_number, None, "not a JSON document") from None


def _header(raw: bytes | None) -> dict[str, int]:
    if raw is None:
        raise ImportRejected(1, None, "the stream is empty: a header line is required")
    header = _parse(1, raw)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ImportRejected(1, None, f"not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise ImportRejected(
            1, None, f"version {header.get('version')!r} is not supported (expected {VERSION})"
        )
    tables = header.get("tables")
    if not isinstance(tables, list):
        raise ImportRejected(1, None, "the header has no table list")
    expected: dict[str, int] = {}
    for entry in tables:
        name = entry.get("name") if isinstance(entry, dict) else None
        rows = entry.get("rows") if isinstance(entry, dict) else None
        if (
            not isinstance(name, str)
            or not _IDENTIFIER.match(name)
            or type(rows) is not int
            or rows < 0
        ):
            raise ImportRejected(1, None, "the header's table list is malformed")
        expected[name] = rows
    return expected


@dataclass
class _Importer:
    conn: Connection
    tenant_id: str
    tables: dict[str, _Table]
    app_only: bool
    check_user: UserCheck
    with_usage: bool
    imported: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    renamed: dict[str, dict[str, str]] = field(default_factory=dict)
    periods: set[str] = field(default_factory=set)
    _role: str = ""

    async def _role_for(self, table: str) -> None:
        wanted = OWNER_ROLE if table in _GATEWAY else RUNTIME_ROLE
        if wanted != self._role:
            await (
                as_owner(self.conn)
                if wanted == OWNER_ROLE
                else as_tenant(self.conn, self.tenant_id)
            )
            self._role = wanted

    def _imports(self, name: str) -> bool:
        if name not in _GATEWAY:
            return True
        if self.app_only:
            return False
        return _GATEWAY[name][1] or (name == "tg_usage" and self.with_usage)

    async def row(self, line: int, name: str, row: dict[str, Any]) -> None:
        self.seen[name] = self.seen.get(name, 0) + 1
        if not self._imports(name):
            self.skipped[name] = self.skipped.get(name, 0) + 1
            return
        table = self.tables[name]
        unknown = set(row) - set(table.columns)
        if unknown:
            raise ImportRejected(line, name, f"unknown columns {sorted(unknown)}")
        if name == "tg_users":
            try:
                row = {**row, **self.check_user(row)}
            except ValueError as exc:
                raise ImportRejected(line, name, str(exc)) from None
        elif name == "tg_usage":
            _check_usage(line, row)
        row = {column: value for column, value in row.items() if column in table.insertable}
        row[table.tenant_column] = self.tenant_id  # never trusted from the file
        for child_columns, parent, parent_columns in table.parents:
            for child_column, parent_column in zip(child_columns, parent_columns, strict=True):
                mapping = self.renamed.get(f"{parent}.{parent_column}")
                if mapping and row.get(child_column) in mapping:
                    row[child_column] = mapping[row[child_column]]
        await self._role_for(name)
        if table.text_key and isinstance(row.get(table.key[0]), str):
            await self._avoid_collision(table, row)
        if name == "tg_usage":
            self.periods.add(str(row.get("period")))
        columns = ", ".join(f'"{c}"' for c in row)
        insert = (
            f'INSERT INTO "{name}" ({columns}) SELECT {columns}'
            f' FROM json_populate_record(NULL::"{name}", $1::json)'
        )
        if name == "tg_usage":  # usage adds up: the target keeps its own and gains the source's
            insert += _ADD_USAGE
        try:  # a failure is reported (and the whole import rolled back), not a 500
            await self.conn.execute(insert, json.dumps(row))
        except asyncpg.PostgresError as exc:
            raise ImportRejected(line, name, _reason(exc)) from None
        self.imported[name] = self.imported.get(name, 0) + 1

    async def _avoid_collision(self, table: _Table, row: dict[str, Any]) -> None:
        column = table.key[0]
        old = new = row[column]
        taken = (
            f'SELECT 1 FROM "{table.name}" WHERE "{table.tenant_column}" = $1 AND "{column}" = $2'
        )
        while await self.conn.fetchval(taken, self.tenant_id, new):
            new = _renamed(old)
        if new != old:
            row[column] = new
            self.renamed.setdefault(f"{table.name}.{column}", {})[old] = new


_SUFFIX = 9  # "-" and 8 hex digits


def _renamed(key: str) -> str:
    """``key`` with a random suffix, cut so the result stays an id (``keys.is_id``: at most
    ``ID_MAX_LENGTH`` characters) if it was one."""
    return f"{key[: ID_MAX_LENGTH - _SUFFIX]}-{secrets.token_hex(4)}"


def _check_usage(line: int, row: Mapping[str, Any]) -> None:
    """A usage row must be a tally a counter can hold (``tallies.py``)."""
    value = row.get("value")
    if type(value) is not int or not 0 <= value <= MAX_TALLY:
        raise ImportRejected(
            line, "tg_usage", f"value must be an integer between 0 and {MAX_TALLY}"
        )
    if field_name(row.get("field")) is None:
        raise ImportRejected(line, "tg_usage", "field must be text without NUL, at most 1 KiB")


async def _check_usage_sums(
    conn: Connection, tenant_id: str, periods: list[str], line: int
) -> None:
    """What the imported rows add up to with the target's own: still tallies, and no more
    refunds than calls in any period (refunds would lift the quota and cancel the bill)."""
    rows = await conn.fetch(
        "SELECT period, field, value FROM tg_usage WHERE tenant_id = $1 AND period = ANY($2)",
        tenant_id,
        periods,
    )
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["value"] > MAX_TALLY:
            reason = f"period {row['period']}, {row['field']}: {row['value']} passes {MAX_TALLY}"
            raise ImportRejected(line, "tg_usage", reason)
        totals.setdefault(row["period"], {})[row["field"]] = row["value"]
    for period, tallies in sorted(totals.items()):
        refunded, calls = tallies.get("refunded", 0), tallies.get("calls", 0)
        if refunded > calls:
            reason = f"period {period}: refunded {refunded} would exceed calls {calls}"
            raise ImportRejected(line, "tg_usage", reason)


def _reason(exc: asyncpg.PostgresError) -> str:
    message = str(exc).split("\n", 1)[0]
    detail = getattr(exc, "detail", None)
    return f"{message} ({detail})" if detail else message


async def import_tenant(
    database: Database,
    tenant_id: str,
    lines: AsyncIterator[tuple[int, bytes]],
    *,
    check_user: UserCheck,
    dry_run: bool = False,
    app_only: bool = False,
    seat_limit: int | None = None,
    with_usage: bool = False,
    audit: AuditEntry | None = None,
) -> ImportResult:
    """Load an export into ``tenant_id`` in one transaction: every row, or none, and with them
    (unless a dry run) the ``audit`` entry that records it, its target the counts."""
    header_line = await anext(lines, None)
    expected = _header(header_line[1] if header_line else None)
    async with database.transfer_connection() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await lock_transfer(conn, tenant_id)
            await as_owner(conn)
            tables = {
                name: await _describe(conn, name, column)
                for name, (column, _, _) in _GATEWAY.items()
            }
            for name in await application_tables(conn):
                tables[name] = await _describe(conn, name, "tenant_id")
            for name in expected:
                if name not in tables:
                    raise ImportRejected(1, name, "this table cannot be imported into a tenant")
            importer = _Importer(conn, tenant_id, tables, app_only, check_user, with_usage)
            async for line, raw in lines:
                if not raw.strip():
                    continue
                document = _parse(line, raw)
                if not isinstance(document, dict) or set(document) != {"table", "row"}:
                    raise ImportRejected(line, None, 'expected {"table": …, "row": {…}}')
                name, row = document["table"], document["row"]
                if not isinstance(name, str) or name not in expected:
                    raise ImportRejected(line, str(name)[:64], "table not listed in the header")
                if not isinstance(row, dict):
                    raise ImportRejected(line, name, "row must be a JSON object")
                await importer.row(line, name, row)
            for name, rows in expected.items():
                if importer.seen.get(name, 0) != rows:
                    found = importer.seen.get(name, 0)
                    raise ImportRejected(
                        _line_count(importer),
                        name,
                        f"the stream is truncated or padded: {found} rows, the header says {rows}",
                    )
            await as_owner(conn)
            if importer.periods:
                await _check_usage_sums(
                    conn, tenant_id, sorted(importer.periods), _line_count(importer)
                )
            if seat_limit is not None:
                # the tenant row's lock: users added meanwhile (directory.add_user) wait
                await conn.execute("SELECT 1 FROM tg_tenants WHERE id = $1 FOR UPDATE", tenant_id)
                users = await conn.fetchval(
                    "SELECT count(*) FROM tg_users WHERE tenant_id = $1", tenant_id
                )
                if users > seat_limit:
                    raise ImportRejected(
                        _line_count(importer),
                        "tg_users",
                        f"{users} users would exceed the seat limit of {seat_limit}",
                    )
            counts = {
                "imported": dict(sorted(importer.imported.items())),
                "skipped": dict(sorted(importer.skipped.items())),
            }
            if audit is not None and not dry_run:
                recorded = json.dumps(counts, separators=(",", ":"))
                # in the import's transaction: if it cannot be written (a server fault, as for
                # any change whose entry fails), nothing is imported
                await insert_audit(conn, dataclasses.replace(audit, target=recorded))
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
    summary = {**counts, "dry_run": dry_run}
    return ImportResult(summary, [] if dry_run else sorted(importer.periods))


def _line_count(importer: _Importer) -> int:
    return 1 + sum(importer.seen.values())
