"""Where a webhook may connect: the address policy, and the transport that enforces it.

A webhook URL names a host the gateway connects to from inside the operator's network, so only
public unicast addresses are allowed by default. Refused: loopback, private, link-local,
unique-local, carrier-grade NAT, multicast, reserved, documentation, benchmarking and unspecified
addresses, in any spelling a resolver accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
``127.1``, ``127.0.0.1.``), and the IPv6 forms that carry such an IPv4 address (mapped,
translated, NAT64, 6to4, Teredo). ``WebhookPolicy(allowed_networks)`` opens CIDRs for
self-hosted receivers.

A host name is checked through what it resolves to: every address, at every delivery attempt.
``PinnedTransport`` then connects to the address it checked, never to the name, so a DNS answer
that changes between the check and the connect (rebinding) cannot move the delivery. For https,
SNI and the certificate's host name check still use the name.

Names are resolved on threads of the policy's own (``lookup_threads``, 8 by default), never on
the event loop's default executor, which PostgreSQL and Redis connections resolve their hosts
on: a name server that never answers ties up at most those threads. A tenant has at most
``lookups_per_tenant`` (2) of them at once, counted until the thread returns, even when the
caller stopped waiting at ``resolve_timeout``; its further lookups wait for one of its own.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

from tenant_gateway.exceptions import ConfigurationError, WebhookTargetRefused

__all__ = [
    "IPAddress",
    "PinnedTransport",
    "Resolver",
    "TENANT_EXTENSION",
    "WebhookPolicy",
    "WebhookTarget",
    "embedded_ipv4",
    "host_address",
    "refusal",
    "system_resolver",
    "webhook_target",
]

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]
"""(host name, port) → every address it resolves to; ``OSError`` when it does not. It may
block: the policy runs it on its own threads."""

TENANT_EXTENSION = "tenant_gateway.tenant"
"""The httpx request extension naming the tenant a delivery is for (its share of lookups)."""
LOOKUP_THREADS = 8
LOOKUPS_PER_TENANT = 2

# IANA special-purpose registries; anything else in IPv4 is public.
_IPV4_REFUSED = tuple(
    (IPv4Network(network), why)
    for network, why in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "reserved"),  # "this network": 0.x reaches the local host on Linux
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # 255.255.255.255 (broadcast) included
    )
)
_IPV6_REFUSED = tuple(
    (IPv6Network(network), why)
    for network, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "unique-local"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "private"),  # local-use NAT64
        ("100::/64", "reserved"),  # discard-only
        ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo among them
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
    )
)
_GLOBAL_UNICAST = IPv6Network("2000::/3")  # outside it, all of IPv6 is reserved
# Forms through which an IPv6 socket reaches an IPv4 address: only the IPv4 address matters.
_CARRIES_IPV4 = (
    (IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
    (IPv6Network("::ffff:0:0:0/96"), "IPv4-translated"),
    (IPv6Network("64:ff9b::/96"), "NAT64"),
)
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_DIGITS = {10: "0123456789", 8: "01234567", 16: "0123456789abcdef"}


def _ipv4_number(part: str) -> int | None:
    """One part of a numeric IPv4 host, as resolvers read it: ``0x`` hex, leading-0 octal,
    else decimal; None if it is not a number."""
    text = part.lower()
    if text.startswith("0x"):
        digits, base = text[2:], 16
    elif len(text) > 1 and text.startswith("0"):
        digits, base = text[1:], 8
    else:
        digits, base = text, 10
    if any(c not in _DIGITS[base] for c in digits):
        return None
    return int(digits, base) if digits else 0


def _parse_ipv4(host: str) -> IPv4Address | None:
    """A host that ends in a number is an IPv4 address in one of the spellings ``inet_aton``
    (and the WHATWG URL standard) accept — 1 to 4 parts, the last filling the remaining bytes —
    or malformed (``ValueError``); any other host is a name (None)."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # one trailing dot: the same host
    last = parts[-1]
    if not last or not (last.isascii() and last.isdigit() or _ipv4_number(last) is not None):
        return None
    numbers = [_ipv4_number(part) if part else None for part in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise ValueError(f"{host!r} is not a valid IPv4 address (a part is out of range)")
    value = values[-1]
    for index, n in enumerate(values[:-1]):
        value += n << (8 * (3 - index))
    return IPv4Address(value)


def host_address(host: str) -> IPAddress | None:
    """The address a host literally is, in any spelling; None for a host name. ``host`` is a
    URL's host without brackets; ``ValueError`` if it is neither an address nor a name."""
    if ":" in host:
        if "%" in host:
            raise ValueError("an IPv6 zone identifier is not allowed")
        try:
            return IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    address = _parse_ipv4(host)
    if address is not None:
        return address
    labels = host.removesuffix(".").split(".")
    if len(host) > 254 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name")
    return None


def embedded_ipv4(address: IPv6Address) -> tuple[tuple[IPv4Address, str], ...]:
    """The IPv4 addresses an IPv6 address carries, each with the form that carries it."""
    for network, form in _CARRIES_IPV4:
        if address in network:
            return ((IPv4Address(int(address) & 0xFFFFFFFF), form),)
    if address.sixtofour is not None:
        return ((address.sixtofour, "6to4"),)
    if address.teredo is not None:
        server, client = address.teredo
        return ((server, "Teredo"), (client, "Teredo"))
    return ()


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default (``"loopback"``, …), or None if it is public."""
    if isinstance(address, IPv4Address):
        return next((why for network, why in _IPV4_REFUSED if address in network), None)
    carried = embedded_ipv4(address)
    for inner, form in carried:
        why = refusal(inner)
        if why is not None:
            return f"{why} ({inner}, {form})"
    if carried and any(address in network for network, _ in _CARRIES_IPV4):
        return None  # reaches nothing but its public IPv4 address
    why = next((why for network, why in _IPV6_REFUSED if address in network), None)
    if why is None and address not in _GLOBAL_UNICAST:
        why = "reserved"
    return why


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A webhook URL's scheme, host and port, and the address the host literally is."""

    scheme: str
    host: str
    """The host as sent in ``Host`` and SNI: a name in ASCII (IDNA), or the literal as written."""
    port: int
    address: IPAddress | None


def webhook_target(url: str | httpx.URL) -> WebhookTarget:
    """Parse a webhook URL as the client will; ``ValueError`` saying what is wrong with it."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parsed.userinfo:
        raise ValueError("must not carry credentials")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise ValueError("the port must be from 1 to 65535")
    host = parsed.raw_host.decode("ascii")
    return WebhookTarget(parsed.scheme, host, port, host_address(host))


def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _, _, _, _, sockaddr in infos:
        address = ip_address(str(sockaddr[0]).partition("%")[0])  # no scope id
        if address not in addresses:
            addresses.append(address)
    return addresses


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        return ip_network(text)
    except ValueError as exc:
        raise ConfigurationError(f"webhook_allowed_networks: {exc}") from None


class WebhookPolicy:
    """The default refusals, less the networks the operator opened."""

    def __init__(
        self,
        allowed_networks: Iterable[str] = (),
        *,
        resolver: Resolver = system_resolver,
        resolve_timeout: float = 5.0,
        lookup_threads: int = LOOKUP_THREADS,
        lookups_per_tenant: int = LOOKUPS_PER_TENANT,
    ) -> None:
        if isinstance(allowed_networks, str):  # a lone CIDR would be read as its characters
            raise ConfigurationError("webhook_allowed_networks must be a list of CIDRs")
        self.allowed_networks = tuple(_network(text) for text in allowed_networks)
        self.resolver = resolver  # tests put names of their own in it
        self.resolve_timeout = resolve_timeout
        self._lookup_threads = lookup_threads
        self._lookups_per_tenant = lookups_per_tenant
        self._threads: ThreadPoolExecutor | None = None  # made at the first lookup
        self._running: dict[str, int] = {}
        """Lookups per tenant whose thread has not returned (or that wait for one)."""
        self._freed: dict[str, asyncio.Event] = {}
        """Set when a lookup of the tenant ends: the tenant's waiting lookups look again."""

    def _allowed(self, address: IPAddress) -> bool:
        # An IPv4-mapped address is a socket to that IPv4 address: an IPv4 CIDR covers it.
        candidates = [address]
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate in network
            for candidate in candidates
            for network in self.allowed_networks
            if candidate.version == network.version
        )

    def check_address(self, address: IPAddress, via: str = "") -> None:
        """``WebhookTargetRefused`` unless the address is public or in an allowed network;
        ``via`` says how the URL led to it (``"example.com resolves to "``)."""
        why = None if self._allowed(address) else refusal(address)
        if why is not None:
            verb = ", which is" if via else " is"
            raise WebhookTargetRefused(f"not allowed: {via}{address}{verb} {why}")

    async def addresses(self, target: WebhookTarget, tenant: str = "") -> list[IPAddress]:
        """Every address of the target, each checked; ``OSError`` if a name does not resolve
        (within ``resolve_timeout``, waiting for one of ``tenant``'s lookups included)."""
        if target.address is not None:
            spelled = target.host != str(target.address)  # 2130706433 is 127.0.0.1
            self.check_address(target.address, f"{target.host} is " if spelled else "")
            return [target.address]
        async with asyncio.timeout(self.resolve_timeout):
            resolved = await self._resolve(target.host, target.port, tenant)
        if not resolved:
            raise OSError(f"{target.host} has no address")
        for address in resolved:
            self.check_address(address, f"{target.host} resolves to ")
        return resolved

    async def refusal_of(self, url: str, tenant: str = "") -> str | None:
        """Why ``url`` may not be set as a webhook now (None: it may): a malformed URL, a
        refused literal address, or a name that resolves to a refused address. A name that
        does not resolve now (in time) passes; every delivery checks it again."""
        try:
            await self.addresses(webhook_target(url), tenant)
        except (ValueError, WebhookTargetRefused) as exc:
            return str(exc)
        except OSError:
            pass
        return None

    async def _resolve(self, host: str, port: int, tenant: str) -> list[IPAddress]:
        while self._running.get(tenant, 0) >= self._lookups_per_tenant:
            freed = self._freed.get(tenant)
            if freed is None:
                freed = self._freed[tenant] = asyncio.Event()
            await freed.wait()
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                self._lookup_threads, thread_name_prefix="tg-webhook-dns"
            )
        self._running[tenant] = self._running.get(tenant, 0) + 1
        loop = asyncio.get_running_loop()
        lookup = self._threads.submit(self.resolver, host, port)

        def returned(_: Future[list[IPAddress]]) -> None:
            # On the lookup's thread when it returns (on the loop's, when a queued one is
            # cancelled): its tenant's share comes back only now.
            try:
                loop.call_soon_threadsafe(self._lookup_ended, tenant)
            except RuntimeError:  # the loop is closed: nobody is left waiting
                pass

        lookup.add_done_callback(returned)
        return await asyncio.wrap_future(lookup, loop=loop)  # cancelled: a queued one is too

    def _lookup_ended(self, tenant: str) -> None:
        running = self._running.pop(tenant) - 1
        if running:
            self._running[tenant] = running
        freed = self._freed.pop(tenant, None)
        if freed is not None:
            freed.set()

    def close(self) -> None:
        """Let the lookup threads go (one still blocked ends when its resolver returns)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None


class PinnedTransport(httpx.AsyncBaseTransport):
    """Sends each request to the first address the policy checked for its host, with the
    URL's own ``Host`` header and, for https, SNI and certificate check on the host name.
    Connections are not kept between requests (one could otherwise serve a later request for
    another name on the same address, unverified for that name)."""

    def __init__(self, policy: WebhookPolicy, *, verify: ssl.SSLContext | bool = True) -> None:
        self._policy = policy
        self._inner = httpx.AsyncHTTPTransport(
            verify=verify, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            target = webhook_target(request.url)
        except ValueError as exc:
            raise WebhookTargetRefused(f"{request.url.host or 'the URL'} {exc}") from None
        extensions = dict(request.extensions)
        tenant = str(extensions.pop(TENANT_EXTENSION, ""))
        try:
            addresses = await self._policy.addresses(target, tenant)
        except OSError as exc:  # retried like any connection failure
            error = f"cannot resolve {target.host}: {exc}"
            raise httpx.ConnectError(error, request=request) from exc
        if target.scheme == "https" and target.address is None:
            extensions["sni_hostname"] = target.host.removesuffix(".")
        pinned = httpx.Request(
            request.method,
            request.url.copy_with(host=str(addresses[0])),
            headers=request.headers,  # Host: still the URL's
            stream=request.stream,
            extensions=extensions,
        )
        return await self._inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self._inner.aclose()
