"""Quota threshold events: the 80 % and 100 % marks, the hook, and webhook delivery (signed,
retried with backoff, one tenant's deliveries in order, hostile receivers and targets cut)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import pytest
import redis.asyncio as aioredis

from tenant_gateway import TenantGateway
from tenant_gateway.events import QuotaEvent, threshold_marks
from tenant_gateway.netpolicy import IPAddress

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, Stores, auth, register
from .helpers import QUOTA_PLANS, T, assert_problem, calls
from .receiver import WebhookReceiver

LOOPBACK_ALLOWED = ["127.0.0.0/8"]  # the receivers listen on 127.0.0.1


def gateway(stores: Stores, **kwargs: Any) -> TenantGateway:
    kwargs.setdefault("webhook_allowed_networks", LOOPBACK_ALLOWED)
    return TenantGateway(
        echo_app(), admin_jwt_secret=JWT_SECRET, plans=QUOTA_PLANS, **stores.kwargs(), **kwargs
    )


# -- threshold events ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "marks"),
    [
        (1000, {800: (80,), 1000: (100,)}),
        (3, {3: (80, 100)}),  # ceil(2.4) = 3: one call reaches both
        (7, {6: (80,), 7: (100,)}),
        (0, {}),
    ],
)
def test_threshold_marks(limit: int, marks: dict[int, tuple[int, ...]]) -> None:
    assert threshold_marks(limit) == marks


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    fields = dict(part.split("=", 1) for part in headers["tenant-gateway-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields["v1"])


async def test_threshold_events_fire_once_each(stores: Stores, client_for: ClientFor) -> None:
    hooked: list[QuotaEvent] = []
    gw = gateway(stores, on_quota_threshold=hooked.append)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    async with WebhookReceiver() as receiver:
        set_hook = await client.put(
            f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant)
        )
        assert set_hook.status_code == 200
        secret = set_hook.json()["secret"]
        statuses = await calls(client, tenant, 200)
        assert statuses.count(200) == 100
        await gw.services.events.drain()
        deliveries = [(h, json.loads(b)) for h, b in receiver.deliveries]
    assert sorted(body["threshold"] for _, body in deliveries) == [80, 100]
    assert all(
        verify(secret, headers, json.dumps(body, separators=(",", ":")).encode())
        for headers, body in deliveries
    )
    assert {body["used"] for _, body in deliveries} == {80, 100}
    assert sorted(e.threshold for e in hooked) == [80, 100]


async def test_two_gateways_still_fire_once(
    postgres_url: str, redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    kwargs: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "redis_key_prefix": redis_prefix,
        "plans": QUOTA_PLANS,
        "webhook_allowed_networks": LOOPBACK_ALLOWED,
    }
    first, second = TenantGateway(echo_app(), **kwargs), TenantGateway(echo_app(), **kwargs)
    a, b = await client_for(first), await client_for(second)
    tenant = await register(a, plan="hundred")
    async with WebhookReceiver() as receiver:
        await a.put(f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant))
        await asyncio.gather(calls(a, tenant, 100), calls(b, tenant, 100))
        await first.services.events.drain()
        await second.services.events.drain()
    assert sorted(json.loads(body)["threshold"] for _, body in receiver.deliveries) == [80, 100]


async def test_a_hanging_receiver_never_slows_requests(
    stores: Stores, client_for: ClientFor
) -> None:
    """The receiver answers nothing until released: every call completes while the delivery it
    triggered is still waiting, so no request waits on a webhook."""
    gw = gateway(stores)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    async with WebhookReceiver(hang=True) as receiver:
        await client.put(
            f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant)
        )
        statuses = await asyncio.wait_for(calls(client, tenant, 100), 60)
        assert statuses.count(200) == 100
        for _ in range(6000):  # the first delivery reaches the receiver, in the background
            if receiver.attempts:
                break
            await asyncio.sleep(0.01)
        assert receiver.attempts >= 1
        assert receiver.deliveries == []  # still hanging: the calls above did not wait for it
        receiver.release()
        await gw.services.events.drain()
    assert sorted(json.loads(body)["threshold"] for _, body in receiver.deliveries) == [80, 100]


@pytest.mark.parametrize(
    ("failures", "attempts", "waits"), [(2, 3, [0.5, 1.0]), (99, 5, [0.5, 1.0, 2.0, 4.0])]
)
async def test_webhook_retries_with_backoff(
    stores: Stores, client_for: ClientFor, failures: int, attempts: int, waits: list[float]
) -> None:
    """Doubling waits from 0.5 s between attempts, five attempts at most."""
    waited: list[float] = []

    async def sleep(seconds: float) -> None:  # the schedule, without the waiting
        waited.append(seconds)

    gw = gateway(stores, sleep=sleep)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    async with WebhookReceiver(fail_first=failures) as receiver:
        await client.put(
            f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant)
        )
        await calls(client, tenant, 80)
        await gw.services.events.drain()
        assert receiver.attempts == attempts
        assert len(receiver.deliveries) == (1 if failures < attempts else 0)
    assert waited == waits
    delivered = failures < attempts  # /metrics: tenant_gateway_webhook_deliveries_total
    assert gw.services.events.deliveries == {
        "delivered": int(delivered),
        "failed": int(not delivered),
        "dropped": 0,
    }


async def test_a_crossing_replayed_after_a_redis_loss_fires_once(
    stores: Stores, client_for: ClientFor
) -> None:
    """The 80th call fires; the counters are then lost before the ledger saw it, so the next
    call is the 80th again. The outbox (claimed once per tenant, period and threshold) keeps
    it to one event."""
    hooked: list[QuotaEvent] = []
    gw = gateway(stores, on_quota_threshold=hooked.append, usage_flush_interval=3600)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    assert (await calls(client, tenant, 79)).count(200) == 79
    await gw.flush()  # the ledger holds 79
    assert (await calls(client, tenant, 1)) == [200]  # the 80th: fires
    period = datetime.now(UTC).strftime("%Y-%m")
    if stores.name == "real":
        raw = aioredis.Redis.from_url(stores.redis_url or "")
        assert await raw.delete(f"{stores.redis_key_prefix}usage:{{{tenant['id']}}}:{period}")
        await raw.aclose()
    else:
        await gw.services.counters.forget([(tenant["id"], period)])
    assert (await calls(client, tenant, 1)) == [200]  # restored to 79: the 80th again
    await gw.services.events.drain()
    assert [event.threshold for event in hooked] == [80]


BAD_WEBHOOK_URLS = [
    "ftp://example.com/hook",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "http://",
    "http://0.0.0.0/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::]/hook",
    "http://user:pass@example.com/hook",
    "example.com/hook",
    # the spellings of the metadata address that were accepted before
    "http://2852039166/latest/meta-data",
    "http://0xa9fea9fe/latest/meta-data",
    "http://0251.0376.0251.0376/latest/meta-data",
    "http://169.254.43518/latest/meta-data",
    "http://[::ffff:169.254.169.254]/latest/meta-data",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
    "http://[fe80::1]/hook",
    "http://0/hook",
    # loopback, private, unique-local, carrier-grade NAT, names that resolve to loopback
    "http://127.0.0.1:8080/hook",
    "http://2130706433:8080/hook",
    "http://[::ffff:7f00:1]:8080/hook",
    "http://127.1:8080/hook",
    "http://[::1]:8080/hook",
    "http://localhost:8080/hook",
    "http://10.0.0.1/hook",
    "http://192.168.1.1/hook",
    "http://[fd00::1]/hook",
    "http://100.64.0.1/hook",
]


@pytest.mark.parametrize("url", BAD_WEBHOOK_URLS)
async def test_bad_webhook_urls(stores: Stores, client_for: ClientFor, url: str) -> None:
    client = await client_for(gateway(stores, webhook_allowed_networks=()))
    tenant = await register(client, plan="hundred")
    response = await client.put(
        f"{T}/{tenant['id']}/webhook", json={"url": url}, headers=auth(tenant)
    )
    assert_problem(response, 422, "validation_error")
    assert (await client.get(f"{T}/{tenant['id']}/webhook", headers=auth(tenant))).json() == {
        "url": None
    }


async def test_without_an_allowed_network_nothing_reaches_loopback(
    stores: Stores, client_for: ClientFor, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver stands for a service on the gateway's own host. Its URL is refused when
    set; stored anyway (as before the fix), every delivery is dropped with a log line."""
    gw = gateway(stores, webhook_allowed_networks=())
    client = await client_for(gw)
    async with WebhookReceiver() as receiver:
        spellings = ["127.0.0.1", "2130706433", "[::ffff:7f00:1]", "127.1", "localhost"]
        tenants = []
        for host in spellings:
            tenant = await register(client, plan="hundred")
            url = receiver.url_for(host)
            answer = await client.put(
                f"{T}/{tenant['id']}/webhook", json={"url": url}, headers=auth(tenant)
            )
            assert_problem(answer, 422, "validation_error")
            assert await gw.services.directory.set_webhook(tenant["id"], url, "whsec_x")
            tenants.append(tenant)
        with caplog.at_level("WARNING", logger="tenant_gateway.events"):
            for tenant in tenants:
                assert (await calls(client, tenant, 80)).count(200) == 80
            await gw.services.events.drain()
        assert receiver.attempts == 0
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == len(spellings)
    assert gw.services.events.deliveries["dropped"] == len(spellings)
    assert any("2130706433 is 127.0.0.1, which is loopback" in line for line in dropped)


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "[::ffff:7f00:1]", "127.1"])
async def test_an_allowed_network_receives_in_any_spelling(
    stores: Stores, client_for: ClientFor, host: str
) -> None:
    gw = gateway(stores)  # 127.0.0.0/8 allowed
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    async with WebhookReceiver() as receiver:
        answer = await client.put(
            f"{T}/{tenant['id']}/webhook",
            json={"url": receiver.url_for(host)},
            headers=auth(tenant),
        )
        assert answer.status_code == 200, answer.text
        await calls(client, tenant, 80)
        await gw.services.events.drain()
    ((headers, body),) = receiver.deliveries
    assert json.loads(body)["threshold"] == 80 and headers["host"] == f"{host}:{receiver.port}"


async def test_a_name_rebound_to_loopback_after_it_was_set_is_dropped(
    stores: Stores, client_for: ClientFor, caplog: pytest.LogCaptureFixture
) -> None:
    """DNS rebinding: the name resolves to a public address when the URL is set, to loopback
    (where the receiver listens) at delivery. Nothing connects to loopback."""
    gw = gateway(stores, webhook_allowed_networks=())
    answers = {"hooks.rebind.test": ["93.184.216.34"]}

    def resolve(host: str, port: int) -> list[IPAddress]:
        return [ip_address(address) for address in answers[host]]

    gw.services.events.policy.resolver = resolve
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    async with WebhookReceiver() as receiver:
        url = receiver.url_for("hooks.rebind.test")
        answer = await client.put(
            f"{T}/{tenant['id']}/webhook", json={"url": url}, headers=auth(tenant)
        )
        assert answer.status_code == 200
        answers["hooks.rebind.test"] = ["127.0.0.1"]
        with caplog.at_level("WARNING", logger="tenant_gateway.events"):
            await calls(client, tenant, 80)
            await gw.services.events.drain()
        assert receiver.attempts == 0
    assert any(
        "hooks.rebind.test resolves to 127.0.0.1, which is loopback" in r.getMessage()
        for r in caplog.records
    )


async def test_redirects_are_not_followed(stores: Stores, client_for: ClientFor) -> None:
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    gw = gateway(stores, sleep=sleep)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    async with WebhookReceiver() as inside:
        async with WebhookReceiver(redirect_to=inside.url) as receiver:
            await client.put(
                f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant)
            )
            await calls(client, tenant, 80)
            await gw.services.events.drain()
            assert receiver.attempts == 5  # a 307 is a failed attempt, retried as such
        assert inside.attempts == 0


# -- receivers that fight back (review #5) ---------------------------------------------------


class HostileReceiver:
    """A receiver of the tenant's own making on 127.0.0.1: it reads each request, then answers
    200 with a chunked body of ``body_bytes`` (as fast as the client takes it), or, with
    ``drip``, sends its status line and then one header byte every 50 ms, never ending. It
    counts what it managed to send and whether the client cut the connection."""

    def __init__(self, *, body_bytes: int = 0, drip: bool = False) -> None:
        self.body_bytes = body_bytes
        self.drip = drip
        self.requests = 0
        self.sent: list[int] = []
        """Body bytes each connection handed to the socket before it ended."""
        self.cut = 0
        """Connections the client closed before the answer ended."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.drip:
            writer.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            for _ in range(72_000):  # an hour: longer than any test waits
                await asyncio.sleep(0.05)
                writer.write(b"a")
                await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65_536
        while self.sent[-1] < self.body_bytes:
            writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await writer.drain()
            self.sent[-1] += len(chunk)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            self.requests += 1
            self.sent.append(0)
            await self._answer(writer)
        except ConnectionError:
            self.cut += 1
        finally:
            writer.close()
            self._handlers.discard(task)

    async def settled(self, connections: int) -> None:
        """Wait (bounded) until ``connections`` connections have ended on this side too."""
        for _ in range(6000):
            if len(self.sent) >= connections and not self._handlers:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.sent)} connections, {len(self._handlers)} still open")

    async def __aenter__(self) -> HostileReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_receiver_answering_an_endless_body_costs_no_memory(
    stores: Stores, client_for: ClientFor
) -> None:
    """The receiver answers 200 with a 48 MiB body. The whole body was read into memory (100 MiB
    in 0.5 s in the review); now only the status line and headers are: the delivery counts as
    done and the connection is closed with most of the body never sent."""
    gw = gateway(stores)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    body_bytes = 48 * 1024 * 1024
    async with HostileReceiver(body_bytes=body_bytes) as receiver:
        answer = await client.put(
            f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant)
        )
        assert answer.status_code == 200
        assert (await calls(client, tenant, 80)).count(200) == 80
        await asyncio.wait_for(gw.services.events.drain(), 60)
        await receiver.settled(1)
    assert receiver.requests == 1  # a 200: delivered, not retried
    assert receiver.cut == 1
    # What the sockets' buffers took before the close (a few MiB on loopback), never the body.
    assert receiver.sent[0] < body_bytes // 2, receiver.sent


async def test_a_receiver_dripping_its_answer_is_cut_at_the_attempt_deadline(
    stores: Stores, client_for: ClientFor
) -> None:
    """One header byte every 50 ms never trips a per-read timeout (5 s): the delivery stayed
    open for as long as the receiver liked. Now each attempt ends at its deadline (10 s by
    default, 0.5 s here) and is retried as a failed one."""
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    gw = gateway(stores, sleep=sleep, webhook_attempt_timeout=0.5)
    client = await client_for(gw)
    tenant = await register(client, plan="hundred")
    async with HostileReceiver(drip=True) as receiver:
        await client.put(
            f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant)
        )
        assert (await calls(client, tenant, 80)).count(200) == 80
        await asyncio.wait_for(gw.services.events.drain(), 60)
        await receiver.settled(5)
    assert receiver.requests == 5 and receiver.cut == 5
    assert waited == [0.5, 1.0, 2.0, 4.0]


async def test_a_tenant_s_deliveries_run_one_at_a_time_in_order(
    stores: Stores, client_for: ClientFor
) -> None:
    """Both thresholds crossed at once, the receiver holding every request: the 100 % delivery
    (and its hook) waited for nothing, so a tenant held as many deliveries open as it had
    events. Now the 100 % one starts only once the 80 % one is delivered."""
    async with WebhookReceiver(hang=True) as receiver:
        seen: list[tuple[int, int]] = []  # (threshold, deliveries done when its hook ran)
        gw = gateway(
            stores,
            on_quota_threshold=lambda e: seen.append((e.threshold, len(receiver.deliveries))),
        )
        client = await client_for(gw)
        tenant = await register(client, plan="hundred")
        await client.put(
            f"{T}/{tenant['id']}/webhook", json={"url": receiver.url}, headers=auth(tenant)
        )
        assert (await calls(client, tenant, 100)).count(200) == 100
        for _ in range(6000):
            if receiver.attempts:
                break
            await asyncio.sleep(0.01)
        await gw.services.events._queue.join()  # both events claimed, both deliveries started
        for _ in range(10):
            await asyncio.sleep(0)
        assert receiver.attempts == 1 and seen == [(80, 0)]
        receiver.release()
        await asyncio.wait_for(gw.services.events.drain(), 60)
    assert seen == [(80, 0), (100, 1)]
    assert [json.loads(body)["threshold"] for _, body in receiver.deliveries] == [80, 100]


# -- bounded tallies (issue 17) --------------------------------------------------------------


async def test_the_tenant_sees_how_each_delivery_ended(
    stores: Stores, client_for: ClientFor
) -> None:
    """``GET /{id}/webhook/deliveries``: each quota event with its outcome, attempts and last
    error, newest first, and only the tenant's own."""

    async def sleep(seconds: float) -> None:  # the backoff, without the waiting
        pass

    gw = gateway(stores, sleep=sleep)
    client = await client_for(gw)
    failing, without, dropped = [await register(client, plan="hundred") for _ in range(3)]
    async with WebhookReceiver(fail_first=5) as receiver:  # the 80 % mark's 5 attempts fail
        await client.put(
            f"{T}/{failing['id']}/webhook", json={"url": receiver.url}, headers=auth(failing)
        )
        # stored past the policy, as a URL set before the policy refused it would be
        assert await gw.services.directory.set_webhook(dropped["id"], "http://10.0.0.1/", "s")
        await calls(client, failing, 80)
        await gw.services.events.drain()
        await calls(client, failing, 20)  # the 100 % mark: the receiver answers now
        await calls(client, without, 80)
        await calls(client, dropped, 80)
        await gw.services.events.drain()

    def outcomes(tenant: dict[str, Any]) -> list[tuple[int, str, int, str | None]]:
        return [
            (d["threshold"], d["outcome"], d["attempts"], d["last_error"])
            for d in answers[tenant["id"]]["deliveries"]
        ]

    answers = {}
    for tenant in (failing, without, dropped):
        answer = await client.get(f"{T}/{tenant['id']}/webhook/deliveries", headers=auth(tenant))
        assert answer.status_code == 200, answer.text
        answers[tenant["id"]] = answer.json()
    assert outcomes(failing) == [(100, "delivered", 1, None), (80, "failed", 5, "HTTP 500")]
    assert outcomes(without) == [(80, "no_webhook", 0, None)]
    ((threshold, outcome, attempts, error),) = outcomes(dropped)
    assert (threshold, outcome, attempts) == (80, "dropped", 1)
    assert error is not None and "10.0.0.1" in error
    delivered = answers[failing["id"]]["deliveries"][0]
    assert delivered["period"] == datetime.now(UTC).strftime("%Y-%m")
    assert delivered["finished_at"] >= delivered["created_at"]

    other = await client.get(f"{T}/{failing['id']}/webhook/deliveries", headers=auth(without))
    assert other.status_code in (403, 404)
