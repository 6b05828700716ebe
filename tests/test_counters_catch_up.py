"""Counters never trail the ledger (``redis/identity.py``, ``lua/hydrate.lua``): a hash Redis
still holds after its server changed (restarted from an older dump, demoted and promoted again)
is checked against the ledger, and raised to it, before it is used again. On private
redis-servers the tests restart (``tests/sentinels.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.tallies import HYDRATED

from .sentinels import RedisProcess, poll

pytestmark = pytest.mark.slow

KEY = ("tenant_a", "2026-11")
NAME = f"t:usage:{{{KEY[0]}}}:{KEY[1]}"
ROUTE = "route|2xx|GET /x"


class Ledger:
    """The hydration source: what PostgreSQL's ledger would answer (a snapshot of the hash)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, int]] = {}
        self.reads = 0

    async def __call__(self, key: tuple[str, str]) -> dict[str, int]:
        self.reads += 1
        return self.rows.get(key, {})

    async def snapshot(self, counters: RedisCounters) -> None:
        self.rows.update(await counters.snapshots([KEY]))


async def until_answered(call: Callable[[], Awaitable[object]], within: float = 15.0) -> object:
    """``call()``'s answer, once the counters reach the server again (a restart)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def decide(counters: RedisCounters) -> int:
    admission = await counters.admit(KEY, "01", None, False)
    return admission.used


async def test_a_server_restarted_from_an_older_dump_is_raised_to_the_ledger(
    lone_redis: RedisProcess,
) -> None:
    """The issue's case on one Redis: the dump is older than the ledger. Without the check
    the counter would restart from the dump's 10 calls and stay short all month."""
    ledger = Ledger()
    counters = RedisCounters(f"{lone_redis.url}/0", key_prefix="t:", hydrate_from=ledger)
    try:
        for _ in range(10):
            await decide(counters)
        with lone_redis.client() as client:
            client.save()  # the dump: 10 calls
        for _ in range(40):
            await decide(counters)
        await counters.add({KEY: {ROUTE: 50}})
        await ledger.snapshot(counters)
        assert ledger.rows[KEY]["calls"] == 50
        lone_redis.kill()
        lone_redis.start(port=lone_redis.port)  # loads the dump; a new run id
        with lone_redis.client() as client:
            assert client.hget(NAME, "calls") == b"10" and client.hexists(NAME, HYDRATED)
        reads = ledger.reads
        # The flush path first: its tally lands on the raised hash, not on the dump's.
        await until_answered(lambda: counters.add({KEY: {ROUTE: 1}}))
        assert ledger.reads == reads + 1
        assert await decide(counters) == 51
        tallies = await counters.read(KEY)
        assert tallies["calls"] == 51 and tallies["day:01"] == 51 and tallies[ROUTE] == 51
        assert ledger.reads == reads + 1  # checked once on this server, not at every use
    finally:
        await counters.close()


async def test_a_read_or_a_decision_alone_checks_the_hash_first(
    lone_redis: RedisProcess,
) -> None:
    ledger = Ledger()
    counters = RedisCounters(f"{lone_redis.url}/0", key_prefix="t:", hydrate_from=ledger)
    other = ("tenant_b", "2026-11")
    try:
        for key in (KEY, other):
            await counters.admit(key, "01", None, False)
        with lone_redis.client() as client:
            client.save()
        for _ in range(4):
            for key in (KEY, other):
                await counters.admit(key, "01", None, False)
        ledger.rows.update(await counters.snapshots([KEY, other]))
        lone_redis.kill()
        lone_redis.start(port=lone_redis.port)
        tallies = await until_answered(lambda: counters.read(KEY))
        assert isinstance(tallies, dict) and tallies["calls"] == 5
        assert (await counters.admit(other, "01", 5, False)).admitted is False  # 5 of 5 used
        assert (await counters.read(other))["calls"] == 5
    finally:
        await counters.close()


async def test_a_demoted_primary_is_refused_then_checked_when_promoted_again(
    lone_redis: RedisProcess, tmp_path: Path
) -> None:
    """A write refused as READONLY drops the pipelined connection; the next one finds a
    replica and says so; promoted again (same process, same run id, a new replication id),
    its hash (an older copy, from the primary it followed) is raised to the ledger."""
    elsewhere = RedisProcess(tmp_path / "elsewhere", "elsewhere")
    elsewhere.start()
    ledger = Ledger()
    counters = RedisCounters(f"{lone_redis.url}/0", key_prefix="t:", hydrate_from=ledger)
    try:
        for _ in range(2):
            await decide(counters)
        with lone_redis.client() as source, elsewhere.client() as target:
            target.restore(NAME, 0, source.dump(NAME))  # an older copy: 2 calls
        for _ in range(3):
            await decide(counters)
        await ledger.snapshot(counters)
        with lone_redis.client() as client:
            client.replicaof("127.0.0.1", elsewhere.port)
            poll("a replica in sync", lambda: client.hget(NAME, "calls") == b"2")
        with pytest.raises(StoreUnavailable) as refused:
            await decide(counters)  # on the connection it had: the write is refused
        assert "READONLY" in str(refused.value)
        with pytest.raises(StoreUnavailable) as refused:
            await decide(counters)  # a new connection, which sees what the server is now
        assert "it is a replica" in str(refused.value)
        with lone_redis.client() as client:
            client.replicaof("NO", "ONE")
        assert await until_answered(lambda: decide(counters)) == 6
    finally:
        await counters.close()
        elsewhere.stop()
