"""Where webhooks may connect (issue 17, finding 5): the address policy in every spelling, names
checked through what they resolve to, and deliveries pinned to the address that was checked."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenant_gateway import TenantGateway
from tenant_gateway.cli import main
from tenant_gateway.exceptions import ConfigurationError, WebhookTargetRefused
from tenant_gateway.netpolicy import (
    IPAddress,
    PinnedTransport,
    Resolver,
    WebhookPolicy,
    host_address,
    refusal,
    webhook_target,
)
from tenant_gateway.serve import build_app

from .apps import echo_app
from .conftest import JWT_SECRET, ClientFor, FakeClock, Stores, auth, operator_headers, register
from .helpers import assert_problem
from .receiver import TlsReceiver, WebhookReceiver, certificate_authority

T = "/api/v1/tenants"

METADATA = IPv4Address("169.254.169.254")
LOOPBACK = IPv4Address("127.0.0.1")
# A Teredo address (server 65.54.227.120) whose client, stored inverted, is 127.0.0.1.
TEREDO_LOOPBACK = "2001:0:4136:e378:8000:63bf:80ff:fffe"

# (host as written in the URL, the address it is)
SPELLINGS: list[tuple[str, IPAddress]] = [
    ("169.254.169.254", METADATA),
    ("2852039166", METADATA),  # decimal
    ("0xa9fea9fe", METADATA),  # hex
    ("0XA9FEA9FE", METADATA),
    ("0251.0376.0251.0376", METADATA),  # octal
    ("0xa9.0xfe.0xa9.0xfe", METADATA),
    ("169.254.43518", METADATA),  # the last part fills two bytes
    ("169.16689662", METADATA),  # ... or three
    ("169.254.169.254.", METADATA),  # a trailing dot
    ("127.0.0.1", LOOPBACK),
    ("2130706433", LOOPBACK),  # reached a receiver before the fix
    ("127.1", LOOPBACK),
    ("0x7f.1", LOOPBACK),
    ("0177.0.0.1", LOOPBACK),
    ("017700000001", LOOPBACK),
    ("127.0.0.1.", LOOPBACK),
    ("0", IPv4Address("0.0.0.0")),
    ("0.0.0.0", IPv4Address("0.0.0.0")),
    ("::ffff:169.254.169.254", IPv6Address("::ffff:a9fe:a9fe")),
    ("::ffff:7f00:1", IPv6Address("::ffff:127.0.0.1")),  # reached a receiver before the fix
    ("64:ff9b::a9fe:a9fe", IPv6Address("64:ff9b::169.254.169.254")),
]


@pytest.mark.parametrize(("host", "address"), SPELLINGS, ids=[host for host, _ in SPELLINGS])
def test_every_spelling_is_the_address_it_names(host: str, address: IPAddress) -> None:
    assert host_address(host) == address
    assert refusal(address) is not None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.255", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "reserved"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.0.8", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("100::1", "reserved"),
        ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
        ("5f00::1", "reserved"),  # outside global unicast
        ("64:ff9b:1::a", "private"),  # local-use NAT64
        ("::ffff:169.254.169.254", "link-local (169.254.169.254, IPv4-mapped)"),
        ("::ffff:7f00:1", "loopback (127.0.0.1, IPv4-mapped)"),
        ("::ffff:0:a00:1", "private (10.0.0.1, IPv4-translated)"),
        ("64:ff9b::a9fe:a9fe", "link-local (169.254.169.254, NAT64)"),
        ("64:ff9b::7f00:1", "loopback (127.0.0.1, NAT64)"),
        ("2002:a9fe:a9fe::1", "link-local (169.254.169.254, 6to4)"),
        ("2002:c0a8:101::1", "private (192.168.1.1, 6to4)"),
        (TEREDO_LOOPBACK, "loopback (127.0.0.1, Teredo)"),
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    assert refusal(ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "example.com/hook",
        "http://",
        "http://user:pass@example.com/hook",
        "http://user@example.com/hook",
        "http://example.com\\@127.0.0.1/hook",
        "http://1.2.3.4.5/",
        "http://256.0.0.1/",
        "http://08.0.0.1/",
        "http://1.2.3.0x100/",
        "http://%31%32%37.0.0.1/",
        "http://[fe80::1%25eth0]/",
        "http://[::1/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://a..b/",
    ],
)
def test_malformed_urls(url: str) -> None:
    with pytest.raises(ValueError):
        webhook_target(url)


def test_names_are_names() -> None:
    target = webhook_target("https://Hooks.Example.com./x")
    assert (target.scheme, target.host, target.port, target.address) == (
        "https",
        "hooks.example.com.",
        443,
        None,
    )
    assert webhook_target("http://bücher.example/").host == "xn--bcher-kva.example"
    assert webhook_target("http://[::ffff:7f00:1]:8080/").address == IPv6Address("::ffff:7f00:1")


def table(names: Mapping[str, Sequence[str]], calls: list[str] | None = None) -> Resolver:
    """A resolver answering from ``names`` (an unknown name does not resolve)."""

    def resolve(host: str, port: int) -> list[IPAddress]:
        if calls is not None:
            calls.append(host)
        if host not in names:
            raise OSError(f"{host}: no such name")
        return [ip_address(address) for address in names[host]]

    return resolve


async def test_the_url_is_refused_in_every_spelling() -> None:
    policy = WebhookPolicy()
    for host, _ in SPELLINGS:
        literal = f"[{host}]" if ":" in host else host
        assert (await policy.refusal_of(f"http://{literal}:8080/hook")) is not None, host
    for address in ("fe80::1", "::1", "fc00::1", TEREDO_LOOPBACK, "2002:a9fe:a9fe::1"):
        assert (await policy.refusal_of(f"http://[{address}]/hook")) is not None, address
    assert await policy.refusal_of("http://93.184.216.34/hook") is None


async def test_names_resolving_to_refused_addresses_are_refused() -> None:
    policy = WebhookPolicy(
        resolver=table(
            {
                "metadata.test": ["169.254.169.254"],
                "intranet.test": ["10.0.0.7"],
                "mixed.test": ["93.184.216.34", "192.168.0.10"],  # one bad answer is enough
                "six.test": ["::ffff:169.254.169.254"],
                "public.test": ["93.184.216.34", "2606:4700::1111"],
            }
        )
    )
    assert await policy.refusal_of("http://metadata.test/") == (
        "not allowed: metadata.test resolves to 169.254.169.254, which is link-local"
    )
    for name in ("intranet.test", "mixed.test", "six.test"):
        assert await policy.refusal_of(f"https://{name}/hook") is not None, name
    assert await policy.refusal_of("https://public.test/hook") is None
    # Not resolvable now: accepted, and checked again at every delivery.
    assert await policy.refusal_of("https://unknown.test/hook") is None


async def test_localhost_is_refused_through_the_system_resolver() -> None:
    assert await WebhookPolicy().refusal_of("http://localhost:8080/hook") is not None


async def test_allowed_networks_open_only_what_they_name() -> None:
    policy = WebhookPolicy(["127.0.0.0/8", "fd00::/8"])
    for url in (
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://127.1/",
        "http://[::ffff:7f00:1]/",  # a socket to 127.0.0.1
        "http://[fd00::5]/",
    ):
        assert await policy.refusal_of(url) is None, url
    for url in ("http://169.254.169.254/", "http://10.0.0.1/", "http://[::1]/", "http://0/"):
        assert await policy.refusal_of(url) is not None, url


@pytest.mark.parametrize("networks", [["10.0.0.1/8"], ["nonsense"], ["10.0.0.0/33"], "10.0.0.0/8"])
def test_bad_allowed_networks(networks: list[str] | str) -> None:
    with pytest.raises(ConfigurationError):
        WebhookPolicy(networks)


# -- the pinned connection ---------------------------------------------------------------------


async def post(transport: PinnedTransport, url: str, body: bytes = b"{}") -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        return await client.post(url, content=body)


async def test_the_connection_goes_to_the_checked_address() -> None:
    """``hook.test`` exists only in the policy's resolver: the delivery arriving proves the
    socket went to the address that was checked, not to a second lookup of the name."""
    calls: list[str] = []
    policy = WebhookPolicy(["127.0.0.0/8"], resolver=table({"hook.test": ["127.0.0.1"]}, calls))
    async with WebhookReceiver() as receiver:
        response = await post(PinnedTransport(policy), receiver.url_for("hook.test"), b'{"a":1}')
        assert response.status_code == 204
        ((headers, body),) = receiver.deliveries
    assert headers["host"] == f"hook.test:{receiver.port}" and body == b'{"a":1}'
    assert calls == ["hook.test"]  # resolved once, for the check


async def test_dns_rebinding_cannot_move_the_connection() -> None:
    """The name answers an allowed address for the check and the receiver's address after:
    the connection goes to the first (where nothing listens), never to the receiver."""
    answers = iter([["127.0.0.2"], ["127.0.0.1"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ip_address(address) for address in next(answers)]

    policy = WebhookPolicy(["127.0.0.2/32"], resolver=rebinding)
    async with WebhookReceiver() as receiver:
        with pytest.raises(httpx.ConnectError):
            await post(PinnedTransport(policy), receiver.url_for("rebind.test"))
        assert receiver.attempts == 0
    assert calls == ["rebind.test"]


async def test_a_name_resolving_to_a_refused_address_is_not_connected() -> None:
    policy = WebhookPolicy(resolver=table({"inside.test": ["127.0.0.1"]}))
    async with WebhookReceiver() as receiver:
        with pytest.raises(WebhookTargetRefused, match="inside.test resolves to 127.0.0.1"):
            await post(PinnedTransport(policy), receiver.url_for("inside.test"))
        for host in ("2130706433", "[::ffff:7f00:1]", "127.1", "localhost"):
            with pytest.raises(WebhookTargetRefused):
                await post(PinnedTransport(WebhookPolicy()), receiver.url_for(host))
        assert receiver.attempts == 0


async def test_https_sends_the_name_for_sni_and_checks_the_certificate_against_it(
    tmp_path: Path,
) -> None:
    """The socket goes to 127.0.0.1, but the handshake names ``hook.test`` and the certificate
    (issued for that name only, no IP address) is verified against it."""
    cert, key, trust = certificate_authority(tmp_path, "hook.test")
    policy = WebhookPolicy(["127.0.0.0/8"], resolver=table({"hook.test": ["127.0.0.1"]}))
    async with TlsReceiver(cert, key) as receiver:
        url = f"https://hook.test:{receiver.port}/hook"
        response = await post(PinnedTransport(policy, verify=trust), url)
        assert response.status_code == 204
        assert receiver.sni == ["hook.test"]
        assert receiver.hosts == [f"hook.test:{receiver.port}"]


async def test_https_refuses_a_certificate_for_another_name(tmp_path: Path) -> None:
    cert, key, trust = certificate_authority(tmp_path, "other.test")
    policy = WebhookPolicy(["127.0.0.0/8"], resolver=table({"hook.test": ["127.0.0.1"]}))
    async with TlsReceiver(cert, key) as receiver:
        url = f"https://hook.test:{receiver.port}/hook"
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            await post(PinnedTransport(policy, verify=trust), url)
        assert receiver.sni == ["hook.test"] and receiver.hosts == []


# -- configuration -----------------------------------------------------------------------------


@pytest.fixture
def no_store_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("TG_DATABASE_URL", "TG_REDIS_URL", "TG_PLANS", "TG_WEBHOOK_ALLOWED_NETWORKS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_serve_refuses_a_bad_network(
    no_store_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--webhook-allow-network", "10.0.0.1/8"]) == 2
    assert "10.0.0.1/8 has host bits set" in capsys.readouterr().err
    no_store_env.setenv("TG_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8,nonsense")
    assert main(["serve"]) == 2
    assert "'nonsense' does not appear to be an IPv4 or IPv6 network" in capsys.readouterr().err


def test_the_workers_read_the_networks_from_the_environment(
    no_store_env: pytest.MonkeyPatch,
) -> None:
    no_store_env.setenv("TG_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8, fd00::/8")
    networks = build_app().services.events.policy.allowed_networks
    assert [str(network) for network in networks] == ["10.0.0.0/8", "fd00::/8"]
    no_store_env.delenv("TG_WEBHOOK_ALLOWED_NETWORKS")
    assert build_app().services.events.policy.allowed_networks == ()


# -- the cost of setting a webhook (review #8) -------------------------------------------------


def webhook_gateway(clock: FakeClock, stores: Stores | None = None) -> TenantGateway:
    kwargs = stores.kwargs() if stores is not None else {}
    return TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, clock=clock, **kwargs)


async def put_webhook(
    client: httpx.AsyncClient, tenant: dict[str, Any], url: object, **headers: str
) -> httpx.Response:
    return await client.put(
        f"{T}/{tenant['id']}/webhook", json={"url": url}, headers=headers or auth(tenant)
    )


async def test_setting_a_webhook_is_rate_limited_per_tenant(
    stores: Stores, client_for: ClientFor, clock: FakeClock
) -> None:
    """Every PUT resolves a name: in a loop it was a lookup per request. Now 10 a minute per
    tenant (every attempt counts, even one whose body is refused), then 429 rate_limited with
    Retry-After; other tenants and operators are not held back."""
    client = await client_for(webhook_gateway(clock, stores))
    tenant, other = await register(client), await register(client)
    for n in range(10):
        assert (await put_webhook(client, tenant, f"http://93.184.216.34/{n}")).status_code == 200
    for body in ("http://93.184.216.34/late", 5):
        refused = await put_webhook(client, tenant, body)
        assert_problem(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    current = await client.get(f"{T}/{tenant['id']}/webhook", headers=auth(tenant))
    assert current.json() == {"url": "http://93.184.216.34/9"}
    assert (await put_webhook(client, other, "http://93.184.216.34/o")).status_code == 200
    by_operator = await put_webhook(client, tenant, "http://93.184.216.34/op", **operator_headers())
    assert by_operator.status_code == 200
    clock.advance(60)
    assert (await put_webhook(client, tenant, "http://93.184.216.34/again")).status_code == 200


async def test_a_name_server_that_never_answers_holds_only_the_tenant_s_lookups(
    monkeypatch: pytest.MonkeyPatch, client_for: ClientFor, clock: FakeClock
) -> None:
    """Names under ``blackhole.test`` hang in ``getaddrinfo`` (a name server that never
    answers). A tenant firing 40 webhook settings at once filled the event loop's default
    executor (6 threads here), which PostgreSQL and Redis resolve their hosts on, and every other
    lookup timed out: another tenant's URL naming a loopback host was then accepted unchecked.
    Now the lookups run on the policy's own threads, at most 2 for one tenant until their threads
    return, a tenant runs at most 4 admin requests at once, and the settings are 10 a minute:
    the other tenant's URL is checked and refused."""
    release = threading.Event()
    lock = threading.Lock()
    hanging = [0, 0]  # now, most at once
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".blackhole.test"):
            with lock:
                hanging[0] += 1
                hanging[1] = max(hanging)
            release.wait(60)
            with lock:
                hanging[0] -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "inside.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    gw = webhook_gateway(clock)
    gw.services.events.policy.resolve_timeout = 2.0
    client = await client_for(gw)
    attacker, victim = await register(client), await register(client)
    try:
        flood = asyncio.gather(
            *(put_webhook(client, attacker, f"http://n{n}.blackhole.test/") for n in range(40))
        )
        for _ in range(6000):
            if hanging[0] >= 2:
                break
            await asyncio.sleep(0.01)
        checked = await put_webhook(client, victim, "http://inside.test/hook")
        assert_problem(checked, 422, "validation_error")
        assert "inside.test resolves to 127.0.0.1" in checked.text
        answers = [response.status_code for response in await flood]
        # The tenant's first 4 admin requests are admitted (the per-tenant admin cap) and
        # accepted unresolved (every delivery resolves again); the other 36 are refused at once.
        assert sorted(answers) == [200] * 4 + [429] * 36
        clock.advance(60)
        # The two hanging lookups still hold the attacker's share: this one waits, in vain.
        late = await put_webhook(client, attacker, "http://late.blackhole.test/")
        assert late.status_code == 200
        assert hanging == [2, 2]
        # The default executor was never touched.
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: 7), 10) == 7
    finally:
        release.set()
