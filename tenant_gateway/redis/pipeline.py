"""One pipelined Redis connection for the hot path's quota decisions.

redis-py spends most of a round trip in Python: a pool checkout under a lock, a task per
timed write, a timeout context per read, response callbacks. The quota decision needs none of
that. Here a command is packed and written at once, from a plain callback, without waiting for
earlier replies (RESP pipelining); Redis answers in order, and each reply — parsed by hiredis
— resolves the next waiting future. One timer, not one per command, bounds how long the
oldest command may wait: past ``timeout`` the connection is aborted and every command in
flight fails.

Errors are redis-py's (``ConnectionError``, ``TimeoutError``, ``ResponseError``), so callers
handle one exception tree whichever client took the call. The connection is opened lazily and
again after any failure; URLs are read by redis-py's ``parse_url`` (``redis://``, ``rediss://``,
``unix://``, user, password, database), and a ``rediss://`` URL's ``ssl_*`` options mean what
they mean to redis-py's ``SSLConnection`` (``_tls_context``). Two hooks make it follow a server
that moves: ``locate`` gives the address at each connect (the URL's is used otherwise), and
``greet`` sees each new connection before any command (to learn which server it reached, or
refuse it).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import hiredis
from redis import exceptions as errors
from redis.asyncio.connection import SSLConnection, parse_url

__all__ = ["Greet", "PipelinedRedis", "bulk", "pack_command"]

Arg = bytes | str | int
Greet = Callable[[Callable[..., Awaitable[Any]]], Awaitable[None]]
"""Called with a new connection's ``send`` (a command's words → its reply; an error reply is
returned) once it is authenticated; raising a ``RedisError`` refuses the connection."""

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def bulk(value: Arg) -> bytes:
    """One RESP bulk string."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_command(args: tuple[Arg, ...] | list[Arg]) -> bytes:
    """A command as a RESP array of bulk strings."""
    return b"*%d\r\n%s" % (len(args), b"".join(bulk(arg) for arg in args))


class _Connection(asyncio.Protocol):
    """One socket: writes commands, matches replies to the futures in order."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=errors.ResponseError)
        self._pending: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._failure: errors.RedisError | None = None
        self.closed = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if not pending:
                    raise errors.ConnectionError("Redis sent a reply nobody asked for")
                _, future = pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (errors.RedisError, hiredis.ProtocolError) as exc:
            self._fail(
                exc if isinstance(exc, errors.RedisError) else errors.ConnectionError(str(exc))
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        failure = self._failure or errors.ConnectionError(
            f"Connection to Redis lost: {exc}" if exc else "Connection closed by Redis"
        )
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(failure)

    # -- commands ----------------------------------------------------------------------------

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed or self._transport is None:
            raise errors.ConnectionError("Redis connection is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        now = self._loop.time()
        self._transport.write(command)
        self._pending.append((now, future))
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(now + self._timeout, self._check_deadline)
        return future

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        oldest = self._pending[0][0]
        if self._loop.time() - oldest >= self._timeout:
            self._fail(errors.TimeoutError(f"Redis did not answer within {self._timeout:g} s"))
        else:
            self._watchdog = self._loop.call_at(oldest + self._timeout, self._check_deadline)

    def _fail(self, failure: errors.RedisError) -> None:
        """Abort the socket: every command in flight fails with ``failure``."""
        if self._failure is None:
            self._failure = failure
        self.closed = True
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows and fails what is pending
        else:
            self.connection_lost(None)

    def close(self) -> None:
        self._fail(errors.ConnectionError("Redis connection closed by the client"))


class PipelinedRedis:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        locate: Callable[[], Awaitable[tuple[str, int]]] | None = None,
        greet: Greet | None = None,
    ) -> None:
        self._params = parse_url(url)
        self._timeout = timeout
        self._locate = locate
        self._greet = greet
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._tls: ssl.SSLContext | None = None  # built at the first connect, then kept

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.closed

    def send(self, *args: Arg) -> asyncio.Future[Any]:
        """Write one command now; the future gets its reply (a ``ResponseError`` reply is
        returned, not raised, so one bad command does not look like a dead server). Raises
        ``ConnectionError`` when not connected: ``await connect()`` first."""
        return self.send_packed(pack_command(args))

    def send_packed(self, command: bytes) -> asyncio.Future[Any]:
        """``send`` for a command already packed as RESP."""
        if self._connection is None or self._connection.closed:
            raise errors.ConnectionError("Redis connection is not open")
        return self._connection.send(command)

    async def connect(self) -> None:
        """Open the connection unless it is open; concurrent callers share one attempt."""
        if self.connected:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        self._connection = await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        params = self._params
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        host, port = str(params.get("host", "localhost")), int(params.get("port", 6379))
        if self._locate is not None:  # asked at each connect: the server may have moved
            host, port = await self._locate()
        try:
            async with asyncio.timeout(self._timeout):
                if "path" in params:
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self._timeout), str(params["path"])
                    )
                else:
                    # With TLS, asyncio sends and checks the URL's host as the server name.
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self._timeout), host, port, ssl=self._ssl_context()
                    )
                for command in self._handshake():
                    answer = await connection.send(pack_command(command))
                    if isinstance(answer, errors.ResponseError):
                        raise answer
                if self._greet is not None:
                    opened = connection
                    await self._greet(lambda *words: opened.send(pack_command(words)))
        except BaseException as exc:
            if connection is not None:
                connection.close()
            if isinstance(exc, TimeoutError):  # the builtin, from asyncio.timeout
                raise errors.TimeoutError("Timeout connecting to Redis") from exc
            if isinstance(exc, OSError):
                raise errors.ConnectionError(f"Error connecting to Redis: {exc}") from exc
            raise
        return connection

    def _handshake(self) -> list[tuple[Arg, ...]]:
        """AUTH and SELECT, as the URL asks."""
        params = self._params
        commands: list[tuple[Arg, ...]] = []
        if params.get("password"):
            user = params.get("username")
            password = str(params["password"])
            commands.append(("AUTH", str(user), password) if user else ("AUTH", password))
        if params.get("db"):
            commands.append(("SELECT", int(params["db"])))
        return commands

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a ``rediss://`` URL (None for the others): built at the first
        connect, kept for the next ones. A context that cannot be built (a missing file, a
        wrong key password) fails the connect with ``ConnectionError``, as in redis-py."""
        if self._params.get("connection_class") is not SSLConnection:
            return None
        if self._tls is None:
            try:
                self._tls = _tls_context(self._params)
            except errors.RedisError:
                raise
            except Exception as exc:
                raise errors.ConnectionError(f"Cannot set up TLS for Redis: {exc}") from exc
        return self._tls

    def disconnect(self) -> None:
        """Drop the connection; the next ``connect`` opens another (where ``locate`` says)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self.disconnect()


def _tls_context(options: Mapping[str, object]) -> ssl.SSLContext:
    """The context redis-py's ``SSLConnection`` builds from the same URL options, with its
    defaults: the system's CAs, certificates required, host name checked unless
    ``ssl_cert_reqs=none``.

    ``ssl_cert_reqs`` (none, optional, required), ``ssl_check_hostname``, ``ssl_ca_certs``,
    ``ssl_ca_path``, ``ssl_ca_data`` (PEM), ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_password``, ``ssl_min_version`` (a ``TLSVersion`` number: 771 is TLS 1.2),
    ``ssl_ciphers``, ``ssl_include_verify_flags`` and ``ssl_exclude_verify_flags``
    (``VerifyFlags`` names)."""
    cert_reqs = _CERT_REQS.get(str(options.get("ssl_cert_reqs", "required")))
    if cert_reqs is None:
        raise errors.RedisError(
            f"Invalid SSL Certificate Requirements Flag: {options.get('ssl_cert_reqs')}"
        )
    context = ssl.create_default_context()
    context.check_hostname = cert_reqs != ssl.CERT_NONE and bool(
        options.get("ssl_check_hostname", True)
    )
    context.verify_mode = cert_reqs
    for flag in _flags(options, "ssl_include_verify_flags"):
        context.verify_flags |= flag
    for flag in _flags(options, "ssl_exclude_verify_flags"):
        context.verify_flags &= ~flag
    certfile, keyfile = _text(options, "ssl_certfile"), _text(options, "ssl_keyfile")
    if certfile or keyfile:
        if not certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        context.load_cert_chain(certfile, keyfile, _text(options, "ssl_password"))
    ca_certs, ca_path = _text(options, "ssl_ca_certs"), _text(options, "ssl_ca_path")
    ca_data = _text(options, "ssl_ca_data")
    if ca_certs or ca_path or ca_data:
        context.load_verify_locations(ca_certs, ca_path, ca_data)
    min_version = options.get("ssl_min_version")
    if isinstance(min_version, int):
        context.minimum_version = ssl.TLSVersion(min_version)
    ciphers = _text(options, "ssl_ciphers")
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def _text(options: Mapping[str, object], name: str) -> str | None:
    value = options.get(name)
    return None if value is None else str(value)


def _flags(options: Mapping[str, object], name: str) -> list[ssl.VerifyFlags]:
    value = options.get(name)  # parse_url made the names a list of VerifyFlags
    return [ssl.VerifyFlags(flag) for flag in value] if isinstance(value, list) else []
