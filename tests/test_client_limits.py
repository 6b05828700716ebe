"""Abuse from one client address: sign-up floods, plan picking, fake-key floods (issue 17).

Each test performs the attack and shows it is refused. The sign-up limit counts in process on
the injected clock (memory) or in the shared Redis by the wall clock, so the Redis cases use a
window of a day, which no test run crosses; the failed-authentication limit is always in
process, on the injected clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tenant_gateway import TenantGateway
from tenant_gateway.client_limits import ClientLimiter, client_address, limiter_for, parse_rate
from tenant_gateway.exceptions import (
    ConfigurationError,
    InvalidApiKey,
    StoreUnavailable,
    TooManyAttempts,
)
from tenant_gateway.keys import generate_api_key
from tenant_gateway.postgres.directory import PostgresDirectory
from tenant_gateway.resolver import KeyResolver

from .apps import echo_app
from .conftest import JWT_SECRET, FakeClock, Stores, auth, operator_headers, register
from .helpers import PROBLEM, CountingDirectory, add_tenant

REGISTER = "/api/v1/tenants/register"
BODY = {"name": "Acme Corp", "plan": "free", "admin_email": "admin@acme.com"}

Connect = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(gateway, "203.0.113.7")``: a client seen by the gateway as coming from
    that address (the ASGI scope's ``client``); gateways started once, all closed after."""
    opened: list[httpx.AsyncClient] = []
    gateways: list[TenantGateway] = []

    async def make(gateway: TenantGateway, address: str = "198.51.100.1") -> httpx.AsyncClient:
        if gateway not in gateways:
            await gateway.startup()
            gateways.append(gateway)
        transport = httpx.ASGITransport(app=gateway, client=(address, 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.aclose()
    for gateway in gateways:
        await gateway.shutdown()


def gateway(stores: Stores, clock: FakeClock, **kwargs: Any) -> TenantGateway:
    return TenantGateway(
        echo_app(), **stores.kwargs(), clock=clock, admin_jwt_secret=JWT_SECRET, **kwargs
    )


def assert_limited(response: httpx.Response, longest: int) -> int:
    """A 429 rate_limited problem whose Retry-After is whole seconds within the window."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "rate_limited"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= longest
    return int(retry_after)


async def tenant_count(client: httpx.AsyncClient, name: str) -> int:
    """Tenants named ``name`` (the real database is shared by the whole run)."""
    count, after = 0, ""
    while after is not None:
        page = await client.get(
            f"/api/v1/tenants/?limit=500&after={after}", headers=operator_headers()
        )
        assert page.status_code == 200, page.text
        count += sum(tenant["name"] == name for tenant in page.json()["items"])
        after = page.json()["next_after"]
    return count


def count_lookups(gateway: TenantGateway) -> list[int]:
    """Count the keys the gateway's own directory object looks up (on Postgres, the keys
    looked up together are one query): the real directory does the work, the count is taken
    on its way in. [keys looked up, keys under lookup now, most under lookup at once]."""
    directory = gateway.services.directory
    find_keys = directory.find_keys
    calls = [0, 0, 0]

    async def counted(key_hashes: Collection[bytes]) -> Any:
        calls[0] += len(key_hashes)
        calls[1] += len(key_hashes)
        calls[2] = max(calls[1], calls[2])
        try:
            return await find_keys(key_hashes)
        finally:
            calls[1] -= len(key_hashes)

    directory.find_keys = counted  # type: ignore[method-assign]
    return calls


# -- sign-up ---------------------------------------------------------------------------------


async def test_signup_flood_from_one_address_is_refused_by_default(
    connect: Connect, clock: FakeClock
) -> None:
    """The default: 10 sign-ups a minute per address. The 11th and every later attempt in the
    minute get 429 and create nothing; other addresses are not affected; a minute later the
    address may sign up again."""
    gw = TenantGateway(echo_app(), clock=clock, admin_jwt_secret=JWT_SECRET)
    attacker = await connect(gw, "203.0.113.7")
    for _ in range(10):
        await register(attacker)
    for attempt in range(50):
        spoofed = {"X-Forwarded-For": f"10.1.{attempt}.1"}  # not trusted: changes nothing
        refused = await attacker.post(REGISTER, json=BODY, headers=spoofed)
        assert_limited(refused, 60)
    assert await tenant_count(attacker, BODY["name"]) == 10
    await register(await connect(gw, "203.0.113.8"))
    clock.advance(60)
    await register(attacker)
    assert await tenant_count(attacker, BODY["name"]) == 12


async def test_signup_limit_holds_per_address_on_both_stores(
    stores: Stores, connect: Connect, clock: FakeClock
) -> None:
    gw = gateway(stores, clock, signup_rate="3/day")
    attacker, name = await connect(gw, "203.0.113.7"), f"Flood {uuid4()}"
    for _ in range(3):
        await register(attacker, name=name)
    retry = assert_limited(await attacker.post(REGISTER, json={**BODY, "name": name}), 86_400)
    assert retry > 80_000  # the day's window frees when its first sign-up leaves it
    invalid = await attacker.post(REGISTER, json={"name": 5})  # refused before it is read
    assert_limited(invalid, 86_400)
    assert await tenant_count(attacker, name) == 3
    await register(await connect(gw, "203.0.113.8"))


async def test_an_ipv6_attacker_cannot_rotate_addresses_within_its_64(
    connect: Connect, clock: FakeClock
) -> None:
    gw = TenantGateway(echo_app(), clock=clock, signup_rate="3/day")
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"):
        await register(await connect(gw, host))
    assert_limited(
        await (await connect(gw, "2001:db8:1:2::abcd")).post(REGISTER, json=BODY), 86_400
    )
    await register(await connect(gw, "2001:db8:1:3::1"))  # another /64 is another client


async def test_signup_limit_is_shared_by_gateways_on_one_redis(
    postgres_url: str, redis_url: str, redis_prefix: str, connect: Connect, clock: FakeClock
) -> None:
    """Two gateways on the same Redis (as two worker processes would be) share the window."""
    stores = Stores("real", postgres_url, redis_url, redis_prefix)
    first, second = (
        gateway(stores, clock, signup_rate="3/day"),
        gateway(stores, clock, signup_rate="3/day"),
    )
    one, two = await connect(first, "203.0.113.7"), await connect(second, "203.0.113.7")
    await register(one)
    await register(two)
    await register(one)
    assert_limited(await two.post(REGISTER, json=BODY), 86_400)
    assert_limited(await one.post(REGISTER, json=BODY), 86_400)


async def test_operators_are_not_limited_and_may_register_any_plan(
    stores: Stores, connect: Connect, clock: FakeClock
) -> None:
    gw = gateway(stores, clock, signup_rate="1/day", signup_plans=["free"])
    client = await connect(gw)
    for _ in range(3):
        response = await client.post(
            REGISTER, json={**BODY, "plan": "enterprise"}, headers=operator_headers()
        )
        assert response.status_code == 201, response.text
    await register(client)  # the address's one self-service sign-up is still there


async def test_self_service_may_not_pick_a_plan_outside_signup_plans(
    stores: Stores, connect: Connect, clock: FakeClock
) -> None:
    """Anonymous sign-up chose any plan, unlimited ones included; now only the offered ones."""
    gw = gateway(stores, clock, signup_plans=["free", "professional"])
    client, name = await connect(gw), f"Picky {uuid4()}"
    for plan in ("enterprise", "no-such-plan"):
        refused = await client.post(REGISTER, json={**BODY, "name": name, "plan": plan})
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == PROBLEM
        problem = refused.json()
        assert problem["code"] == "validation_error"
        assert problem["errors"] == [
            {"field": "plan", "message": "must be one of free, professional"}
        ]
    # A tenant's own key is self-service too: only an operator may hand out another plan.
    tenant = await register(client, plan="professional", name=name)
    enterprise = {**BODY, "name": name, "plan": "enterprise"}
    by_key = await client.post(REGISTER, json=enterprise, headers=auth(tenant))
    assert by_key.status_code == 422
    assert await tenant_count(client, name) == 1
    by_operator = await client.post(
        REGISTER, json={**BODY, "plan": "enterprise"}, headers=operator_headers()
    )
    assert by_operator.status_code == 201 and by_operator.json()["plan"] == "enterprise"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("signup_rate", "often"),
        ("signup_rate", "0/minute"),
        ("signup_rate", "10/minute;100/hour"),
        ("auth_failure_rate", "many"),
        ("signup_plans", ["free", "gold"]),
        ("signup_plans", []),
    ],
)
def test_bad_settings_are_configuration_errors(setting: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        TenantGateway(echo_app(), **{setting: value})


def test_rates_parse_and_unlimited_turns_a_limit_off() -> None:
    assert parse_rate(None, "x") is None and parse_rate("Unlimited", "x") is None
    item = parse_rate("10/minute", "x")
    assert item is not None and (item.amount, item.get_expiry()) == (10, 60)


def test_client_addresses() -> None:
    def of(host: str) -> str:
        return client_address({"client": (host, 1)})

    assert of("203.0.113.7") == "203.0.113.7"
    assert of("2001:db8::1") == of("2001:db8::ffff:1") == "2001:db8::/64"
    assert of("::ffff:203.0.113.7") == "203.0.113.7"
    assert of("testclient") == "testclient"
    assert client_address({}) == client_address({"client": None}) == ""


# -- failed authentications ------------------------------------------------------------------


async def test_fake_key_flood_stops_reaching_the_directory(
    stores: Stores, connect: Connect, clock: FakeClock
) -> None:
    """6,000 well-formed fake keys cost 6,000 PostgreSQL queries. Now the default allows 30
    failed authentications a minute per address; after them, the address's unknown keys get
    429 without a lookup, while keys this process knows valid keep working from it (NAT)."""
    gw = gateway(stores, clock, key_cache_long_ttl=1.0)  # stale 1 s after its load, anywhere
    assert isinstance(gw.services.directory, PostgresDirectory) == (stores.name == "real")
    attacker = await connect(gw, "203.0.113.7")
    neighbour = await register(await connect(gw, "198.51.100.1"))
    stranger = await register(await connect(gw, "198.51.100.2"))
    assert (await attacker.get("/whoami", headers=auth(neighbour))).status_code == 200
    lookups = count_lookups(gw)

    answers = [
        (await attacker.get("/whoami", headers={"X-API-Key": generate_api_key()})).status_code
        for _ in range(100)
    ]
    assert answers == [401] * 30 + [429] * 70
    assert lookups[0] == 30
    admin = await attacker.get(
        f"/api/v1/tenants/{neighbour['id']}", headers={"X-API-Key": generate_api_key()}
    )
    assert_limited(admin, 60)
    assert lookups[0] == 30

    # The neighbour behind the same address: its key is cached, then stale but known.
    assert (await attacker.get("/whoami", headers=auth(neighbour))).status_code == 200
    clock.advance(5)
    assert (await attacker.get("/whoami", headers=auth(neighbour))).status_code == 200
    assert lookups[0] == 31
    # A valid key this process has never seen waits out the window from that address only.
    assert_limited(await attacker.get("/whoami", headers=auth(stranger)), 60)
    other = await connect(gw, "198.51.100.3")
    assert (await other.get("/whoami", headers=auth(stranger))).status_code == 200

    clock.advance(60)
    fresh = await attacker.get("/whoami", headers={"X-API-Key": generate_api_key()})
    assert fresh.status_code == 401


async def test_concurrent_fake_keys_cost_no_more_lookups_than_sequential_ones(
    stores: Stores, connect: Connect, clock: FakeClock
) -> None:
    """2,000 fake keys sent at once from one address: each passed the limit's check before the
    first lookup had failed, and each cost a lookup (2,000). Now a key never seen valid waits for
    room in its address's window and at most 4 lookups per address run at once: exactly the
    limit's 30 lookups, 30 answers 401 and the rest 429, while another address's valid key,
    never seen before, is looked up and admitted in the middle of the flood."""
    gw = gateway(stores, clock)
    assert isinstance(gw.services.directory, PostgresDirectory) == (stores.name == "real")
    attacker = await connect(gw, "203.0.113.7")
    bystander = await connect(gw, "198.51.100.2")
    stranger = await register(bystander)
    lookups = count_lookups(gw)

    async def fake() -> int:
        response = await attacker.get("/whoami", headers={"X-API-Key": generate_api_key()})
        if response.status_code == 429:
            assert_limited(response, 60)
        return response.status_code

    async def valid() -> int:
        return (await bystander.get("/whoami", headers=auth(stranger))).status_code

    answers = await asyncio.gather(
        *(fake() for _ in range(1000)), valid(), *(fake() for _ in range(1000))
    )
    assert answers[1000] == 200
    del answers[1000]
    assert (answers.count(401), answers.count(429)) == (30, 1970)
    assert lookups[0] == 30 + 1 and lookups[2] <= 4 + 1
    assert len(gw.services.resolver._failures._running) == 0  # type: ignore[union-attr]


def count_looks(limiter: ClientLimiter) -> list[int]:
    """Count how often the limiter looks at an address's window (``over``): once per attempt
    that starts, and once more each time a waiting attempt is woken."""
    over = limiter.over
    looks = [0]

    def counted(address: str) -> int:
        looks[0] += 1
        return over(address)

    limiter.over = counted  # type: ignore[method-assign]
    return looks


async def test_waiting_attempts_are_woken_one_at_a_time() -> None:
    """2,000 attempts of one address at once (a proxy's clients presenting keys this process
    has not seen, after a restart): the end of each attempt woke every waiter, each to look at
    the window and wait again, ~500,000 looks in all, most of a core for seconds. Now an
    end wakes one waiter: at most a few looks per attempt, still at most 4 under way at once,
    and every attempt goes ahead (none failed)."""
    item = parse_rate("30/minute", "x")
    assert item is not None
    limiter = ClientLimiter(item, FakeClock(), name="x")
    looks = count_looks(limiter)
    running = [0, 0]

    async def attempt() -> int:
        wait = await limiter.begin("203.0.113.7")
        if wait:
            return wait
        running[0] += 1
        running[1] = max(running)
        try:
            await asyncio.sleep(0)  # the lookup
        finally:
            running[0] -= 1
            limiter.end("203.0.113.7")
        return 0

    assert await asyncio.gather(*(attempt() for _ in range(2000))) == [0] * 2000
    assert running[1] == 4
    assert looks[0] <= 3 * 2000
    assert not limiter._waiting and not limiter._running


async def test_a_cancelled_waiter_leaves_its_turn_to_the_next() -> None:
    """Waiters cancelled while waiting, or right after being woken, hold up no one."""
    item = parse_rate("30/minute", "x")
    assert item is not None
    limiter = ClientLimiter(item, FakeClock(), name="x")
    done = [asyncio.Event() for _ in range(20)]

    async def attempt(number: int) -> int:
        wait = await limiter.begin("a")
        if not wait:
            try:
                await done[number].wait()
            finally:
                limiter.end("a")
        return wait

    tasks = [asyncio.create_task(attempt(number)) for number in range(20)]
    await asyncio.sleep(0)
    assert limiter._running["a"] == 4 and len(limiter._waiting["a"]) == 16
    for task in tasks[4:10]:  # cancelled while waiting
        task.cancel()
    done[0].set()
    await asyncio.sleep(0)  # the first attempt ends: its turn goes to the first waiter left…
    tasks[10].cancel()  # …which is cancelled before it runs
    for event in done:
        event.set()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(answer, asyncio.CancelledError) for answer in answers[4:11])
    assert answers[:4] + answers[11:] == [0] * 13
    assert not limiter._waiting and not limiter._running


async def test_fake_key_flood_on_the_admin_api_stops_reaching_the_directory(
    stores: Stores, connect: Connect, clock: FakeClock
) -> None:
    gw = gateway(stores, clock, auth_failure_rate="5/hour")
    attacker = await connect(gw, "203.0.113.7")
    tenant = await register(await connect(gw, "198.51.100.1"))
    lookups = count_lookups(gw)
    answers = []
    for _ in range(40):
        fake = {"Authorization": f"Bearer {generate_api_key()}"}
        answers.append(await attacker.get(f"/api/v1/tenants/{tenant['id']}", headers=fake))
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 35
    assert_limited(answers[-1], 3600)
    assert lookups[0] == 5
    fake_signup = {"X-API-Key": generate_api_key()}
    assert_limited(await attacker.post(REGISTER, json=BODY, headers=fake_signup), 3600)
    assert lookups[0] == 5


async def test_revoked_and_expired_keys_count_as_failures() -> None:
    """A revoked or expired key costs a lookup each time its entry expires: it counts."""
    directory, clock = CountingDirectory(), FakeClock()
    failures = parse_rate("2/minute", "x")
    assert failures is not None
    resolver = KeyResolver(directory, clock, failures=ClientLimiter(failures, clock, name="x"))
    secret, tenant = await add_tenant(directory)
    await resolver.resolve(secret, "203.0.113.7")
    await directory.revoke_key(tenant.id, "key_1", datetime.fromtimestamp(clock(), UTC))
    for _ in range(2):
        clock.advance(1.01)
        with pytest.raises(InvalidApiKey):
            await resolver.resolve(secret, "203.0.113.7")
    assert directory.lookups == 3
    with pytest.raises(TooManyAttempts) as limited:
        await resolver.resolve(generate_api_key(), "203.0.113.7")
    assert limited.value.what == "failed authentications" and limited.value.retry_after >= 1
    assert directory.lookups == 3
    with pytest.raises(InvalidApiKey):
        await resolver.resolve(generate_api_key(), "203.0.113.8")


async def test_window_and_retry_after_follow_the_injected_clock() -> None:
    clock = FakeClock()
    item = parse_rate("3/minute", "x")
    assert item is not None
    limiter = ClientLimiter(item, clock, name="x")
    for second in range(3):
        assert await limiter.hit("a") == 0
        clock.advance(10 if second < 2 else 0)
    assert limiter.over("a") == 40 and await limiter.hit("a") == 40  # the first leaves at 60
    clock.advance(40)
    assert limiter.over("a") == 0 and await limiter.hit("a") == 0
    assert limiter.over("a") == 10
    assert len(limiter) == 1


async def test_an_unreachable_shared_window_is_a_store_outage() -> None:
    """The admin API answers it 503 service_unavailable, as any store outage."""
    limiter = limiter_for(
        "3/day",
        "signup_rate",
        FakeClock(),
        storage=("async+redis://127.0.0.1:1/0", {}),
        key_prefix="x:",
    )
    assert limiter is not None
    with pytest.raises(StoreUnavailable) as outage:
        await limiter.hit("203.0.113.7")
    assert outage.value.store == "Redis"
    await limiter.close()


async def test_the_limiter_keeps_a_bounded_number_of_addresses() -> None:
    """Every address seen kept about 900 bytes for its whole window: failed attempts from a
    stream of fresh addresses (an IPv6 /48 holds 65,536 /64s) grew it without bound. Now at
    most 10,000 addresses are kept, the least recently seen forgotten first: an address that
    keeps trying is not the one that goes."""
    clock = FakeClock()
    item = parse_rate("3/minute", "x")
    assert item is not None
    limiter = ClientLimiter(item, clock, name="x")
    for _ in range(3):
        assert limiter.take("203.0.113.7") == 0
    for n in range(25_000):
        assert limiter.take(f"2001:db8:{n:x}::/64") == 0
        if n % 1_000 == 0:
            assert limiter.take("203.0.113.7") == 60
        assert len(limiter) <= 10_000
    assert limiter.take("203.0.113.7") == 60
    assert limiter.take("2001:db8:0::/64") == 0  # forgotten: a fresh window


async def test_the_shared_limiter_keeps_a_bounded_number_of_refusals(
    redis_url: str, redis_prefix: str
) -> None:
    """The Redis-backed limit remembers refused addresses in process: bounded the same way."""
    clock = FakeClock()
    item = parse_rate("1/day", "x")
    assert item is not None
    limiter = ClientLimiter(
        item,
        clock,
        name="x",
        storage_uri=f"async+{redis_url}",
        key_prefix=redis_prefix,
        max_addresses=50,
    )
    try:
        for n in range(120):
            assert await limiter.hit(f"198.51.100.{n}") == 0
            assert await limiter.hit(f"198.51.100.{n}") > 80_000
            assert len(limiter) <= 50
        assert limiter.over("198.51.100.119") > 80_000  # the latest are remembered
        assert limiter.over("198.51.100.0") == 0  # the first forgotten (Redis still refuses)
        assert await limiter.hit("198.51.100.0") > 80_000
    finally:
        await limiter.close()
