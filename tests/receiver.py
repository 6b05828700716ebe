"""Real webhook receivers on loopback, inside the test's event loop: HTTP served by uvicorn,
and a bare HTTPS one that records the SNI name its clients send (certificates made here)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class WebhookReceiver:
    def __init__(
        self, *, hang: bool = False, fail_first: int = 0, redirect_to: str | None = None
    ) -> None:
        """``hang``: every delivery waits, unanswered, until the test calls ``release()``;
        ``redirect_to``: every delivery is answered 307 to that URL."""
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        self._released = asyncio.Event()
        if not hang:
            self._released.set()
        self._fail_first = fail_first
        self._redirect_to = redirect_to
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = self.url_for("127.0.0.1")
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[Any] | None = None

    async def _hook(self, request: Request) -> Response:
        self.attempts += 1
        await self._released.wait()
        if self.attempts <= self._fail_first:
            return Response(status_code=500)
        if self._redirect_to is not None:
            return Response(status_code=307, headers={"Location": self._redirect_to})
        self.deliveries.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    def url_for(self, host: str) -> str:
        """This receiver's URL with ``host`` spelled as given (an address, in any spelling, or
        a name that resolves to 127.0.0.1)."""
        return f"http://{host}:{self.port}/hook"

    def release(self) -> None:
        self._released.set()

    async def __aenter__(self) -> WebhookReceiver:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        self._server.should_exit = True
        self._server.force_exit = True
        if self._task is not None:
            await self._task


def certificate_authority(directory: Path, hostname: str) -> tuple[Path, Path, ssl.SSLContext]:
    """A CA of the test's own and a server certificate it signed for ``hostname`` (a DNS name
    only, no IP address): (certificate file, key file, a client context trusting only the CA)."""
    now = datetime.now(UTC)

    def signed(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = signed("test CA", ca_key, "test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = signed(hostname, server_key, "test CA", ca_key, ca=False)
    cert_file, key_file = directory / f"{hostname}.pem", directory / f"{hostname}.key"
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    return cert_file, key_file, client


class TlsReceiver:
    """An HTTPS receiver on 127.0.0.1 answering 204 to one request per connection; records the
    SNI name of every handshake and the ``Host`` header of every request."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.sni: list[str | None] = []
        self.hosts: list[str] = []
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert_file, key_file)
        self._context.sni_callback = self._record_sni
        self._server: asyncio.Server | None = None
        self.port = 0

    def _record_sni(self, _: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            self.hosts.append(headers.get("Host") or headers.get("host", ""))
            await reader.readexactly(int(headers.get("Content-Length", "0")))
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> TlsReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
