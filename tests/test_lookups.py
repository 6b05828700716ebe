"""Key lookups asked for together are one directory query (``lookups.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from typing import Any

import pytest

from tenant_gateway.directory import MemoryDirectory, TenantDirectory
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.keys import generate_api_key, hash_api_key, mint_key, new_id
from tenant_gateway.lookups import KeyLookups
from tenant_gateway.models import Role, Tenant, TenantStatus, User
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.directory import PostgresDirectory

START = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


class Queries:
    """The real directory's ``find_keys``, each call noted (its digests), held while ``gate``
    is closed, failing while ``down``."""

    def __init__(self, directory: TenantDirectory) -> None:
        self.directory = directory
        self.batches: list[list[bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        find_keys = directory.find_keys

        async def counted(key_hashes: Collection[bytes]) -> Any:
            self.batches.append(list(key_hashes))
            await self.gate.wait()
            if self.down:
                raise StoreUnavailable("PostgreSQL", "postgresql://db", "down")
            return await find_keys(key_hashes)

        directory.find_keys = counted  # type: ignore[method-assign]


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


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def new_keys(directory: TenantDirectory, count: int) -> list[tuple[str, str]]:
    """(secret, key id) of ``count`` keys of a new tenant."""
    tenant = Tenant(new_id("tenant"), "T", "free", TenantStatus.ACTIVE, None, "a@t.io", START)
    admin = User(new_id("usr"), tenant.id, "a@t.io", Role.ADMIN, START)
    minted = [mint_key(tenant.id, None, Role.DEVELOPER, START, None) for _ in range(count)]
    await directory.register(tenant, admin, minted[0][1])
    for _, record in minted[1:]:
        await directory.create_key(record)
    return [(secret, record.id) for secret, record in minted]


async def test_keys_asked_for_in_one_turn_are_one_query(directory: TenantDirectory) -> None:
    keys = await new_keys(directory, 50)
    queries = Queries(directory)
    lookups = KeyLookups(directory)
    unknown = generate_api_key()
    asked = [lookups.find(hash_api_key(secret)) for secret, _ in keys]
    answers = await asyncio.gather(*asked, lookups.find(hash_api_key(unknown)))
    assert [found[0].id for found in answers[:-1] if found] == [key_id for _, key_id in keys]
    assert answers[-1] is None
    assert len(queries.batches) == 1 and len(queries.batches[0]) == 51


async def test_keys_asked_for_while_a_query_runs_go_together_in_the_next(
    directory: TenantDirectory,
) -> None:
    """A lone key is looked up at once; the keys asked for while its query runs wait for it
    and go in one query after it (at most ``max_batch`` a query)."""
    keys = await new_keys(directory, 8)
    queries = Queries(directory)
    lookups = KeyLookups(directory, max_batch=3)
    digests = [hash_api_key(secret) for secret, _ in keys]
    queries.gate.clear()
    first = lookups.find(digests[0])
    await turns()
    assert queries.batches == [digests[:1]]  # sent at the end of the turn that asked
    later = []
    for digest in digests[1:]:  # one a turn, while the first query is held
        later.append(lookups.find(digest))
        await turns(1)
    assert len(queries.batches) == 1 and len(lookups) == 7
    assert lookups.find(digests[1]) is later[0]  # asked twice, looked up once
    queries.gate.set()
    answers = await asyncio.gather(first, *later)
    assert [found[0].id for found in answers if found] == [key_id for _, key_id in keys]
    assert queries.batches == [digests[:1], digests[1:4], digests[4:7], digests[7:]]
    assert len(lookups) == 0


async def test_a_failed_query_fails_the_keys_it_carried_and_no_others() -> None:
    directory = MemoryDirectory()
    keys = await new_keys(directory, 3)
    queries = Queries(directory)
    lookups = KeyLookups(directory)
    digests = [hash_api_key(secret) for secret, _ in keys]
    queries.gate.clear()
    queries.down = True
    first = lookups.find(digests[0])
    await turns()
    rest = [lookups.find(digest) for digest in digests[1:]]
    await turns()
    queries.gate.set()
    with pytest.raises(StoreUnavailable):
        await first
    queries.down = False
    assert [found[0].id for found in await asyncio.gather(*rest) if found] == [
        key_id for _, key_id in keys[1:]
    ]
    assert queries.batches == [digests[:1], digests[1:]]
