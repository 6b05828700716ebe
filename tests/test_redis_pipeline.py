"""The hot path's pipelined Redis connection, against the real server (and a proxy to cut)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.quota import MemoryCounters
from tenant_gateway.redis.connect import open_counters
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.decisions import DecisionBatch
from tenant_gateway.redis.pipeline import PipelinedRedis, bulk, pack_command

from .helpers import proxy_to, through
from .tcp_proxy import TcpProxy


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    proxy = await proxy_to(redis_url)
    yield proxy
    await proxy.stop()


@pytest.fixture(params=["real", "cluster"])
def counters_on(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(URL, key prefix) of one Redis, then of a Redis Cluster: the counters' shared cases."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_url"), request.getfixturevalue("cluster_prefix")
    return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


async def flush_scripts(url: str) -> None:
    """SCRIPT FLUSH on every primary, as after a restart: EVALSHA answers NOSCRIPT."""
    if url.startswith("redis+cluster://"):
        nodes = url.removeprefix("redis+cluster://").split(",")
        clients = [aioredis.Redis.from_url(f"redis://{node}") for node in nodes]
    else:
        clients = [aioredis.Redis.from_url(url)]
    for client in clients:
        await client.script_flush()
        await client.aclose()


@pytest.fixture
async def reference(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the same database, to check what the pipeline wrote."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def test_pack_command_is_resp() -> None:
    assert pack_command(("SET", b"k\r\n", 12)) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"


async def test_replies_come_back_in_order(
    redis_url: str, redis_prefix: str, reference: aioredis.Redis
) -> None:
    pipe = PipelinedRedis(redis_url)
    await pipe.connect()
    key = redis_prefix + "n"
    futures = [pipe.send("INCR", key) for _ in range(2_000)]  # all written before any reply
    assert await asyncio.gather(*futures) == list(range(1, 2_001))
    assert await reference.get(key) == "2000"  # the URL's database was selected
    await pipe.close()


async def test_an_error_reply_is_returned_not_raised(redis_url: str) -> None:
    pipe = PipelinedRedis(redis_url)
    await pipe.connect()
    failed, fine = pipe.send("NO-SUCH-COMMAND"), pipe.send("PING")
    assert isinstance(await failed, ResponseError)
    assert await fine == b"PONG"
    await pipe.close()


async def test_sending_needs_a_connection(redis_url: str) -> None:
    pipe = PipelinedRedis(redis_url)
    with pytest.raises(ConnectionError):
        pipe.send("PING")
    await pipe.connect()
    await pipe.close()
    with pytest.raises(ConnectionError):
        pipe.send("PING")


async def test_a_refused_handshake_fails_the_connect(redis_url: str) -> None:
    # This server has no password: AUTH is refused, and so is the connection.
    pipe = PipelinedRedis(redis_url.replace("redis://", "redis://:wrong@"))
    with pytest.raises(ResponseError):
        await pipe.connect()
    assert not pipe.connected


async def test_nothing_listening_is_a_connection_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionError):
        await PipelinedRedis(f"redis://127.0.0.1:{port}/0").connect()


async def test_a_stalled_server_times_out_every_command_in_flight(
    redis_url: str, proxy: TcpProxy
) -> None:
    pipe = PipelinedRedis(through(redis_url, proxy), timeout=0.2)
    await pipe.connect()
    proxy.stall()
    in_flight = [pipe.send("PING") for _ in range(10)]
    results = await asyncio.gather(*in_flight, return_exceptions=True)
    assert all(isinstance(result, TimeoutError) for result in results)
    assert not pipe.connected
    proxy.stall(False)
    await pipe.connect()  # a new connection, through the unstalled proxy
    assert await pipe.send("PING") == b"PONG"
    await pipe.close()


async def test_a_cut_connection_fails_what_is_in_flight_and_reconnects(
    redis_url: str, proxy: TcpProxy
) -> None:
    pipe = PipelinedRedis(through(redis_url, proxy))
    await pipe.connect()
    proxy.stall()  # hold the replies, so the commands are still in flight at the cut
    in_flight = [pipe.send("PING") for _ in range(5)]
    await asyncio.sleep(0)
    proxy.cut()
    results = await asyncio.gather(*in_flight, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    proxy.stall(False)
    await pipe.connect()
    assert await pipe.send("PING") == b"PONG"
    assert proxy.accepted == 2
    await pipe.close()


async def test_concurrent_connects_share_one_attempt(redis_url: str, proxy: TcpProxy) -> None:
    pipe = PipelinedRedis(through(redis_url, proxy))
    await asyncio.gather(*(pipe.connect() for _ in range(20)))
    assert proxy.accepted == 1
    await pipe.close()


async def test_decisions_survive_a_script_flush(counters_on: tuple[str, str]) -> None:
    url, prefix = counters_on
    counters = open_counters(url, key_prefix=prefix)
    key = ("tenant", "2026-11")
    assert (await counters.admit(key, "01", 10, False)).used == 1
    await flush_scripts(url)
    results = await asyncio.gather(*(counters.admit(key, "01", 10, False) for _ in range(12)))
    assert sum(result.admitted for result in results) == 9
    assert (await counters.read(key))["calls"] == 10
    await counters.close()


async def test_a_stalled_redis_fails_decisions_within_the_timeout(
    redis_url: str, redis_prefix: str, proxy: TcpProxy
) -> None:
    counters = RedisCounters(through(redis_url, proxy), key_prefix=redis_prefix, timeout=0.2)
    key = ("tenant", "2026-11")
    assert (await counters.admit(key, "01", 10, False)).admitted
    proxy.stall()
    with pytest.raises(StoreUnavailable) as failure:
        await asyncio.wait_for(counters.admit(key, "01", 10, False), timeout=5)
    assert "did not answer" in str(failure.value)
    await counters.close()


def test_a_batch_packs_each_hash_once() -> None:
    batch = DecisionBatch()
    loop = asyncio.new_event_loop()
    try:
        a, b = bulk("tg:usage:{a}:2026-11"), bulk("tg:usage:{b}:2026-11")
        terms = bulk(10) + bulk(0) + bulk("01")
        for name in (a, b, a):
            batch.add(
                name, terms, ((("t", "2026-11"), "01", 10, False), False), loop.create_future()
            )
        sha = "f" * 40
        expected = pack_command(
            ("EVALSHA", sha, 2, "tg:usage:{a}:2026-11", "tg:usage:{b}:2026-11", 10**15, 77,
             1, 10, 0, "01", 2, 10, 0, "01", 1, 10, 0, "01")
        )  # fmt: skip
        assert batch.command(bulk(sha), bulk(77)) == expected
    finally:
        loop.close()


async def test_one_batch_decides_as_calls_one_by_one_would(counters_on: tuple[str, str]) -> None:
    """Many tenants, limits, overage and days mixed in each batch: the aggregated script must
    answer every decision as the memory store, deciding them one by one, does. (The hashes
    are restored first: decisions that wait for a restore are re-sent in whatever order the
    restores finish, which concurrent requests never had a claim to anyway.)"""
    url, prefix = counters_on
    rng = random.Random(20261126)
    plans = [(3, False), (5, True), (None, False), (0, False), (8, False)]
    for trial in range(5):
        redis_counters = open_counters(url, key_prefix=f"{prefix}{trial}:")
        memory_counters = MemoryCounters()
        calls = [
            ((f"tenant{rng.randrange(4)}", "2026-11"), rng.choice(["01", "02"]), rng.randrange(5))
            for _ in range(120)
        ]
        # The same tenant keeps its plan within a trial, as on a real gateway.
        plan_of = {f"tenant{n}": plans[(n + trial) % len(plans)] for n in range(4)}
        for tenant, (limit, overage) in plan_of.items():
            for store in (redis_counters, memory_counters):
                await store.admit((tenant, "2026-11"), "01", limit, overage)
        batched = await asyncio.gather(
            *(redis_counters.admit(key, day, *plan_of[key[0]]) for key, day, _ in calls)
        )
        one_by_one = [
            await memory_counters.admit(key, day, *plan_of[key[0]]) for key, day, _ in calls
        ]
        assert batched == one_by_one
        for tenant in plan_of:
            key = (tenant, "2026-11")
            redis_tallies = await redis_counters.read(key)
            memory_tallies = await memory_counters.read(key)
            assert redis_tallies == memory_tallies
        await redis_counters.close()


async def test_closing_fails_decisions_still_waiting(redis_url: str, redis_prefix: str) -> None:
    counters = RedisCounters(redis_url, key_prefix=redis_prefix)
    waiting = counters.admit(("tenant", "2026-11"), "01", 10, False)  # not sent yet
    await counters.close()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(waiting, timeout=5)
    await asyncio.sleep(0)  # the send scheduled for that turn finds nothing to send
    assert not counters._pipe.connected
