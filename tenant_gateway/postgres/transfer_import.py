"""Tenant import: the NDJSON stream of ``transfer``, loaded in one transaction, every row
checked; nothing is written unless all of it is."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

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
from tenant_gateway.postgres.rows import insert_audit
from tenant_gateway.tallies import MAX_TALLY, field_name

if TYPE_CHECKING:
    from tenant_gateway.postgres.database import Connection

from tenant_gateway.postgres.database import is_identifier
from tenant_gateway.postgres.transfer import FORMAT, GATEWAY_TABLES, VERSION, Table, describe

__all__ = [
    "MAX_LINE_BYTES",
    "ImportResult",
    "LineTooLong",
    "UserCheck",
    "import_tenant",
    "numbered_lines",
]

UserCheck = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""Holds an imported user row to the rules of adding a user: answers the columns to store
instead (``email``, ``role``), or raises ``ValueError`` naming what is wrong."""


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
            or not is_identifier(name)
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
    tables: dict[str, Table]
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
        wanted = OWNER_ROLE if table in GATEWAY_TABLES else RUNTIME_ROLE
        if wanted != self._role:
            await (
                as_owner(self.conn)
                if wanted == OWNER_ROLE
                else as_tenant(self.conn, self.tenant_id)
            )
            self._role = wanted

    def _imports(self, name: str) -> bool:
        if name not in GATEWAY_TABLES:
            return True
        if self.app_only:
            return False
        return GATEWAY_TABLES[name][1] or (name == "tg_usage" and self.with_usage)

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

    async def _avoid_collision(self, table: Table, row: dict[str, Any]) -> None:
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
                name: await describe(conn, name, column)
                for name, (column, _, _) in GATEWAY_TABLES.items()
            }
            for name in await application_tables(conn):
                tables[name] = await describe(conn, name, "tenant_id")
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
