"""TLS to Redis: a ``rediss://`` URL's ``ssl_*`` options, on real TLS redis-servers started
here. The hot path's pipelined connection and redis-py's client, built from the same URL, must
connect, and refuse, alike."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from benchmarks.launch import free_port
from tenant_gateway.exceptions import StoreUnavailable
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.redis.pipeline import PipelinedRedis, _tls_context

from .conftest import unavailable

pytestmark = pytest.mark.slow

KEY_PASSWORD = "key password"
OTHER_HOST = "redis.example.test"


# -- certificates ----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    names: Sequence[x509.GeneralName] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """Signed by ``issuer``, or by ``key`` itself (self-signed) when there is none."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = (
        (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write(
    directory: Path,
    name: str,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    password: str | None = None,
) -> None:
    """``<name>.pem`` and ``<name>.key`` (PKCS#8, encrypted with ``password`` if given)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    (directory / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def make_certificates(directory: Path) -> None:
    """A private CA (``ca``) and what it signed: ``server`` (localhost, 127.0.0.1, ::1),
    ``client`` and ``client-locked`` (a client certificate, its key encrypted); an unrelated
    ``other-ca``; ``self-signed``, a server certificate for another host name."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("tenant_gateway test CA", ca_key, ca=True)
    _write(directory, "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    local_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server = _certificate(
        "localhost",
        server_key,
        (ca, ca_key),
        names=local_names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    _write(directory, "server", server, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(
        "gateway", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    _write(directory, "client", client, client_key)
    _write(directory, "client-locked", client, client_key, KEY_PASSWORD)
    other_key = ec.generate_private_key(ec.SECP256R1())
    _write(directory, "other-ca", _certificate("another CA", other_key, ca=True), other_key)
    lone_key = ec.generate_private_key(ec.SECP256R1())
    lone = _certificate(OTHER_HOST, lone_key, ca=True, names=[x509.DNSName(OTHER_HOST)])
    _write(directory, "self-signed", lone, lone_key)


# -- servers ---------------------------------------------------------------------------------


class TlsRedis:
    """A throw-away redis-server listening with TLS only, on a free port of 127.0.0.1 and
    ::1 (if the machine has it); no persistence."""

    def __init__(self, directory: Path, *tls_args: str) -> None:
        self.directory = directory
        self._tls_args = tls_args
        self.log = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            unavailable("redis-server", FileNotFoundError("redis-server is not on PATH"))
        for _ in range(3):  # the port was free when chosen: another process may take it
            self.port = free_port()
            with self.log.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        executable,
                        "--port", "0",
                        "--tls-port", str(self.port),
                        "--bind", "127.0.0.1", "-::1",
                        *self._tls_args,
                        "--save", "", "--appendonly", "no",
                        "--dir", str(self.directory),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            while self.process.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"redis-server not ready:\n{self.stop()}") from None
                    time.sleep(0.05)
            output = self.stop()
            if "Bad directive" in output:  # built without TLS: tls-port is unknown to it
                unavailable("redis-server with TLS", RuntimeError(output.strip()[-300:]))
            if "Address already in use" not in output:
                raise AssertionError(f"redis-server exited:\n{output}")
        raise AssertionError(f"redis-server found no free port:\n{self.log.read_text()}")

    def stop(self) -> str:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text(errors="replace")


@dataclass(frozen=True)
class Servers:
    certs: Path
    mutual: int  # private CA, client certificates required
    lone: int  # a self-signed certificate for OTHER_HOST, TLS 1.2 only, no client certificate

    def url(self, port: int, host: str = "127.0.0.1", **options: str | Path) -> str:
        query = urlencode({name: str(value) for name, value in options.items()})
        return f"rediss://{host}:{port}/0" + (f"?{query}" if query else "")

    def mutual_url(self, host: str = "127.0.0.1", **options: str | Path) -> str:
        """The mutual-TLS server with the client certificate, unless ``options`` say else."""
        defaults: dict[str, str | Path] = {
            "ssl_ca_certs": self.certs / "ca.pem",
            "ssl_certfile": self.certs / "client.pem",
            "ssl_keyfile": self.certs / "client.key",
        }
        chosen = {name: value for name, value in {**defaults, **options}.items() if value}
        return self.url(self.mutual, host, **chosen)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("redis-tls")
    certs = root / "certs"
    certs.mkdir()
    make_certificates(certs)
    started: dict[str, TlsRedis] = {}
    try:
        for name, tls_args in [
            (
                "mutual",
                (
                    "--tls-cert-file", str(certs / "server.pem"),
                    "--tls-key-file", str(certs / "server.key"),
                    "--tls-ca-cert-file", str(certs / "ca.pem"),
                    "--tls-auth-clients", "yes",
                ),
            ),
            (
                "lone",
                (
                    "--tls-cert-file", str(certs / "self-signed.pem"),
                    "--tls-key-file", str(certs / "self-signed.key"),
                    "--tls-ca-cert-file", str(certs / "ca.pem"),
                    "--tls-auth-clients", "no",
                    "--tls-protocols", "TLSv1.2",
                ),
            ),
        ]:  # fmt: skip
            directory = root / name
            directory.mkdir()
            server = started[name] = TlsRedis(directory, *tls_args)
            server.start()
        yield Servers(certs, started["mutual"].port, started["lone"].port)
    finally:
        for server in started.values():
            server.stop()


# -- the two clients -------------------------------------------------------------------------

RoundTrip = Callable[[str], Awaitable[bytes]]


async def pipelined(url: str) -> bytes:
    """PING, then an EVAL whose reply is returned, on the pipelined connection."""
    pipe = PipelinedRedis(url, timeout=5)
    try:
        await pipe.connect()
        assert await pipe.send("PING") == b"PONG"
        reply = await pipe.send("EVAL", "return ARGV[1]", 0, "over TLS")
        assert isinstance(reply, bytes)
        return reply
    finally:
        await pipe.close()


async def redis_py(url: str) -> bytes:
    """The same on redis-py's asyncio client (no retries: a refusal is seen at once)."""
    client = aioredis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    try:
        assert await client.ping() is True
        reply = await client.register_script("return ARGV[1]")(args=["over TLS"])
        assert isinstance(reply, bytes)
        return reply
    finally:
        await client.aclose()


@pytest.fixture(params=["pipelined", "redis-py"])
def round_trip(request: pytest.FixtureRequest) -> RoundTrip:
    clients: dict[str, RoundTrip] = {"pipelined": pipelined, "redis-py": redis_py}
    return clients[request.param]


async def refused(round_trip: RoundTrip, url: str) -> str:
    """The ``ConnectionError`` a round trip ends with, in seconds (never a hang)."""
    async with asyncio.timeout(20):
        with pytest.raises(ConnectionError) as failure:
            await round_trip(url)
    return str(failure.value)


# -- connecting ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_mutual_tls_with_a_private_ca(
    servers: Servers, round_trip: RoundTrip, host: str
) -> None:
    # localhost: the name checked is the URL's host (the certificate names it, and 127.0.0.1).
    assert await round_trip(servers.mutual_url(host)) == b"over TLS"


async def test_an_encrypted_client_key_with_its_password(
    servers: Servers, round_trip: RoundTrip
) -> None:
    locked = servers.certs / "client-locked.key"
    url = servers.mutual_url(ssl_keyfile=locked, ssl_password=KEY_PASSWORD)
    assert await round_trip(url) == b"over TLS"


async def test_the_ca_given_inline(servers: Servers, round_trip: RoundTrip) -> None:
    ca_data = (servers.certs / "ca.pem").read_text()
    assert await round_trip(servers.mutual_url(ssl_ca_certs="", ssl_ca_data=ca_data)) == (
        b"over TLS"
    )


async def test_the_ca_from_a_hashed_directory(
    servers: Servers, round_trip: RoundTrip, tmp_path: Path
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("naming a CA directory's files needs the openssl command")
    shutil.copy(servers.certs / "ca.pem", tmp_path / "ca.pem")
    subprocess.run([openssl, "rehash", str(tmp_path)], check=True, capture_output=True)
    url = servers.mutual_url(ssl_ca_certs="", ssl_ca_path=tmp_path)
    assert await round_trip(url) == b"over TLS"


async def test_a_quota_decision_over_mutual_tls(servers: Servers) -> None:
    """Through the counter store: redis-py restores the hash, the pipeline decides."""
    counters = RedisCounters(servers.mutual_url(), key_prefix="tg-tls:", timeout=5)
    try:
        key = ("tenant", "2026-11")
        decisions = [await counters.admit(key, "01", 2, False) for _ in range(3)]
        assert [decision.admitted for decision in decisions] == [True, True, False]
        assert (await counters.read(key))["calls"] == 2
    finally:
        await counters.close()


# -- refusing --------------------------------------------------------------------------------


async def test_without_a_client_certificate_the_server_refuses(
    servers: Servers, round_trip: RoundTrip
) -> None:
    # With TLS 1.3 the client's handshake is over before the server refuses: the refusal
    # comes as an alert in place of the first reply, or, when the server has closed before
    # the client reads it, as a reset. Either way a ConnectionError, at once.
    message = await refused(round_trip, servers.mutual_url(ssl_certfile="", ssl_keyfile=""))
    assert "CERTIFICATE_REQUIRED" in message or "Connection reset by peer" in message, message


async def test_a_wrong_ca_fails_verification(servers: Servers, round_trip: RoundTrip) -> None:
    url = servers.mutual_url(ssl_ca_certs=servers.certs / "other-ca.pem")
    assert "CERTIFICATE_VERIFY_FAILED" in await refused(round_trip, url)


async def test_by_default_the_system_cas_decide(servers: Servers, round_trip: RoundTrip) -> None:
    assert "CERTIFICATE_VERIFY_FAILED" in await refused(round_trip, servers.url(servers.lone))


async def test_cert_reqs_none_accepts_a_self_signed_server(
    servers: Servers, round_trip: RoundTrip
) -> None:
    # Nor is its host name checked: the certificate is for another host.
    url = servers.url(servers.lone, ssl_cert_reqs="none")
    assert await round_trip(url) == b"over TLS"


async def test_a_certificate_for_another_host_fails_while_names_are_checked(
    servers: Servers, round_trip: RoundTrip
) -> None:
    trusted = servers.certs / "self-signed.pem"
    message = await refused(round_trip, servers.url(servers.lone, ssl_ca_certs=trusted))
    assert "mismatch" in message and "'127.0.0.1'" in message  # the URL's host, checked
    unchecked = servers.url(servers.lone, ssl_ca_certs=trusted, ssl_check_hostname="false")
    assert await round_trip(unchecked) == b"over TLS"
    # Still verified: only the name is not.
    wrong_ca = servers.url(
        servers.lone, ssl_ca_certs=servers.certs / "ca.pem", ssl_check_hostname="false"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in await refused(round_trip, wrong_ca)


async def test_a_minimum_version_the_server_does_not_reach(
    servers: Servers, round_trip: RoundTrip
) -> None:
    url = servers.url(servers.lone, ssl_cert_reqs="none", ssl_min_version="772")  # TLS 1.3
    assert "PROTOCOL_VERSION" in await refused(round_trip, url)
    url = servers.url(servers.lone, ssl_cert_reqs="none", ssl_min_version="771")  # TLS 1.2
    assert await round_trip(url) == b"over TLS"


async def test_a_missing_certificate_file_is_a_connection_error(
    servers: Servers, round_trip: RoundTrip
) -> None:
    url = servers.mutual_url(ssl_certfile=servers.certs / "nowhere.pem")
    assert "No such file" in await refused(round_trip, url)


async def test_the_key_password_stays_out_of_error_messages(servers: Servers) -> None:
    url = servers.mutual_url(
        ssl_ca_certs=servers.certs / "other-ca.pem",
        ssl_keyfile=servers.certs / "client-locked.key",
        ssl_password=KEY_PASSWORD,
    )
    counters = RedisCounters(url, key_prefix="tg-tls:", timeout=5)
    try:
        with pytest.raises(StoreUnavailable) as failure:
            await counters.admit(("tenant", "2026-11"), "01", 2, False)
    finally:
        await counters.close()
    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value)
    assert "ssl_password=***" in str(failure.value)
    assert quote_plus(KEY_PASSWORD) not in str(failure.value)


# -- the context, option by option -----------------------------------------------------------


FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"ssl_cert_reqs": "none"},
        {"ssl_cert_reqs": "none", "ssl_check_hostname": "true"},
        {"ssl_cert_reqs": "optional"},
        {"ssl_cert_reqs": "required", "ssl_check_hostname": "false"},
        {"ssl_ca_certs": "ca.pem", "ssl_certfile": "client.pem", "ssl_keyfile": "client.key"},
        {
            "ssl_certfile": "client.pem",
            "ssl_keyfile": "client-locked.key",
            "ssl_password": KEY_PASSWORD,
        },
        {"ssl_ca_data": "ca.pem"},
        {"ssl_min_version": "771", "ssl_ciphers": "ECDHE+AESGCM"},
        {"ssl_include_verify_flags": "VERIFY_X509_STRICT,VERIFY_CRL_CHECK_LEAF"},
        {"ssl_exclude_verify_flags": "[VERIFY_X509_TRUSTED_FIRST]"},
    ],
)
def test_the_context_is_the_one_redis_py_builds(servers: Servers, options: dict[str, str]) -> None:
    """What an ``ssl.SSLContext`` shows of itself, against redis-py's from the same URL."""
    resolved = dict(options)
    for name in FILES:
        if name in resolved:
            resolved[name] = str(servers.certs / resolved[name])
    if "ssl_ca_data" in resolved:
        resolved["ssl_ca_data"] = (servers.certs / resolved["ssl_ca_data"]).read_text()
    params = parse_url(servers.url(servers.mutual, **resolved))
    ours = _tls_context(params)
    kwargs: dict[str, Any] = {k: v for k, v in params.items() if k != "connection_class"}
    # Built afresh: get() may hand out a context that earlier connections shared and grew
    # (certificates looked up in the system's CA directory are added to its store).
    theirs = SSLConnection(**kwargs).ssl_context._build()
    assert ours.protocol == theirs.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert (ours.verify_mode, ours.check_hostname, ours.verify_flags) == (
        theirs.verify_mode,
        theirs.check_hostname,
        theirs.verify_flags,
    )
    assert (ours.minimum_version, ours.maximum_version, ours.options) == (
        theirs.minimum_version,
        theirs.maximum_version,
        theirs.options,
    )
    assert ours.get_ca_certs() == theirs.get_ca_certs()
    assert [c["name"] for c in ours.get_ciphers()] == [c["name"] for c in theirs.get_ciphers()]


@pytest.mark.parametrize("client", ["pipelined", "redis-py"])
async def test_an_unknown_cert_reqs_is_refused(servers: Servers, client: str) -> None:
    url = servers.url(servers.lone, ssl_cert_reqs="NONE")  # redis-py knows the lower case only
    with pytest.raises(RedisError, match="Invalid SSL Certificate Requirements Flag"):
        await (pipelined if client == "pipelined" else redis_py)(url)
