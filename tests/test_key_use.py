"""A key's last use: one statement per flush for every key used, and a row rewritten only once
its stored value is ``LAST_USED_GRANULARITY`` (a minute) older than the use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tenant_gateway.directory import LAST_USED_GRANULARITY, MemoryDirectory, TenantDirectory
from tenant_gateway.keys import mint_key, new_id
from tenant_gateway.models import Role, Tenant, TenantStatus, User
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.resolver import KeyResolver

from .conftest import FakeClock
from .helpers import CountingDirectory, add_tenant

START = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
KeyIds = list[tuple[str, str]]


async def keys_of_a_new_tenant(directory: TenantDirectory, count: int) -> KeyIds:
    tenant = Tenant(new_id("tenant"), "T", "free", TenantStatus.ACTIVE, None, "a@t.io", START)
    admin = User(new_id("usr"), tenant.id, "a@t.io", Role.ADMIN, START)
    records = [mint_key(tenant.id, None, Role.DEVELOPER, START, None)[1] for _ in range(count)]
    await directory.register(tenant, admin, records[0])
    for record in records[1:]:
        await directory.create_key(record)
    return [(tenant.id, record.id) for record in records]


async def last_uses(directory: TenantDirectory, keys: KeyIds) -> list[datetime | None]:
    stored = {key.id: key.last_used_at for key in await directory.list_keys(keys[0][0])}
    return [stored[key_id] for _, key_id in keys]


@pytest.fixture(params=["memory", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def directory(database_url: str | None) -> AsyncIterator[TenantDirectory]:
    found: TenantDirectory = MemoryDirectory()
    if database_url is not None:
        found = PostgresDirectory(Database(database_url))
    await found.start()
    yield found
    await found.close()


async def test_a_use_is_written_once_its_stored_value_is_a_minute_old(
    directory: TenantDirectory,
) -> None:
    keys = await keys_of_a_new_tenant(directory, 3)
    first, second, unused = keys
    await directory.touch_keys({first: START, second: START})
    assert await last_uses(directory, keys) == [START, START, None]
    almost = START + LAST_USED_GRANULARITY - timedelta(seconds=1)
    await directory.touch_keys({first: almost, second: almost})
    assert await last_uses(directory, keys) == [START, START, None]  # within the minute: kept
    later = START + LAST_USED_GRANULARITY
    await directory.touch_keys({first: later, second: almost, unused: START - timedelta(days=1)})
    assert await last_uses(directory, keys) == [later, START, START - timedelta(days=1)]
    await directory.touch_keys({first: START + 2 * LAST_USED_GRANULARITY + timedelta(seconds=5)})
    await directory.touch_keys({first: START})  # a late batch never moves it back
    assert (await last_uses(directory, keys))[0] == START + 2 * LAST_USED_GRANULARITY + timedelta(
        seconds=5
    )


class StatementLog(Database):
    """A real pool whose gateway transactions note every statement run inside them."""

    statements: list[str]

    @asynccontextmanager
    async def gateway_transaction(self) -> AsyncIterator[Any]:
        async with super().gateway_transaction() as conn:

            def note(record: Any) -> None:
                self.statements.append(record.query)

            conn.add_query_logger(note)
            try:
                yield conn
            finally:
                conn.remove_query_logger(note)


@pytest.fixture
def versions(postgres_url: str) -> Iterator[Any]:
    """Each key row's version (its ``xmin``, the transaction that wrote it): an UPDATE of the
    row, even to the same value, makes a new one (and a dead row)."""

    async def read(keys: KeyIds) -> list[str]:
        conn = await asyncpg.connect(postgres_url)
        try:
            rows = await conn.fetch(
                "SELECT id, xmin::text AS version FROM tg_api_keys WHERE tenant_id = $1",
                keys[0][0],
            )
        finally:
            await conn.close()
        by_id = {row["id"]: row["version"] for row in rows}
        return [by_id[key_id] for _, key_id in keys]

    yield read


async def test_a_flush_of_many_keys_is_one_statement_and_rewrites_only_what_is_due(
    postgres_url: str, versions: Any
) -> None:
    database = StatementLog(postgres_url)
    database.statements = []
    directory = PostgresDirectory(database)
    await directory.start()
    try:
        keys = await keys_of_a_new_tenant(directory, 200)
        database.statements.clear()
        await directory.touch_keys({keys[0]: START - timedelta(days=1)})
        # The first on a connection has asyncpg learn the array types too (once a connection).
        ours = [statement for statement in database.statements if "tg_" in statement]
        assert len(ours) == 1 and "UPDATE tg_api_keys" in ours[0]
        database.statements.clear()
        await directory.touch_keys(dict.fromkeys(keys, START))
        assert len(database.statements) == 1 and "UPDATE tg_api_keys" in database.statements[0]
        written = await versions(keys)
        assert len(set(written)) == 1  # all 200 rows in the one statement's transaction

        database.statements.clear()
        soon = START + timedelta(seconds=30)
        await directory.touch_keys(dict.fromkeys(keys, soon))  # each used again, too soon
        assert len(database.statements) == 1
        assert await versions(keys) == written  # no row rewritten: no dead row left behind

        due = {key: START + LAST_USED_GRANULARITY for key in keys[:10]}
        await directory.touch_keys({**dict.fromkeys(keys[10:], soon), **due})
        after = await versions(keys)
        assert after[10:] == written[10:] and len(set(after[:10]) - set(written)) == 1
        assert await last_uses(directory, keys[:10]) == [START + LAST_USED_GRANULARITY] * 10
    finally:
        await directory.close()


async def test_concurrent_flushes_of_the_same_keys_never_deadlock(postgres_url: str) -> None:
    """Two workers flushing the same keys, each batch in its own order: the rows are locked in
    key order, so neither waits for the other in a cycle (PostgreSQL would abort one)."""
    workers = [PostgresDirectory(Database(postgres_url)) for _ in range(2)]
    for worker in workers:
        await worker.start()
    try:
        keys = await keys_of_a_new_tenant(workers[0], 50)
        for round_number in range(1, 21):
            moment = START + round_number * LAST_USED_GRANULARITY  # every key due each round
            batches = [
                {key: moment for key in keys},
                {key: moment + timedelta(seconds=1) for key in reversed(keys)},
            ]
            await asyncio.gather(*(w.touch_keys(b) for w, b in zip(workers, batches, strict=True)))
            stored = set(await last_uses(workers[0], keys))
            assert stored <= {moment, moment + timedelta(seconds=1)} and len(stored) >= 1
    finally:
        for worker in workers:
            await worker.close()


async def test_a_busy_key_is_sent_to_the_store_once_a_minute_not_once_a_flush() -> None:
    """Each flush sent the last use of every key used since the previous one: with 2,000 keys
    in use, 2,000 rows' worth of arrays encoded, sent and joined every second, for the store to
    find them all written within the minute. Now a use less than the granularity after the one
    last sent for its key is not even noted, and one whose write failed is sent again."""
    directory, clock = CountingDirectory(), FakeClock(START)
    resolver = KeyResolver(directory, clock, ttl=1.0, long_ttl=3600.0)
    secret, tenant = await add_tenant(directory)
    ids = (tenant.id, "key_1")
    sent: list[datetime] = []
    for _ in range(150):  # a use a second, drained a second later, as the flush does
        await resolver.resolve(secret)
        clock.advance(1.0)
        sent += resolver.drain_last_used().values()
    assert sent == [START + LAST_USED_GRANULARITY * n for n in range(3)]
    clock.advance(60.0)
    await resolver.resolve(secret)
    failed = resolver.drain_last_used()
    assert list(failed) == [ids]
    resolver.keep_last_used(failed)  # the write failed: sent again next flush
    assert resolver.drain_last_used() == failed
    assert resolver.drain_last_used() == {}
