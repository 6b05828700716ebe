"""A loopback TCP forwarder the tests can cut, to take a real server away mid-test."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.accepted = 0
        """Connections accepted so far (a dead server's callers still knock)."""
        self.blackhole = False
        """When set, accept and hang up at once: the server behind seems dead."""
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._lose_after: bytes | None = None
        self.replies_lost = 0
        """Answers thrown away by ``lose_reply_once`` so far."""
        self._answers: list[tuple[bytes, bytes]] = []

    def lose_reply_once(self, marker: bytes) -> None:
        """The next request holding ``marker`` reaches the server, which answers it; the answer
        is thrown away and the client's connection cut: the caller cannot know it was done."""
        self._lose_after = marker

    def answer_instead(self, marker: bytes, reply: bytes, times: int = 1) -> None:
        """The next ``times`` requests holding ``marker`` never reach the server: the proxy
        answers each with ``reply`` (an error reply a server in trouble gives, say). For a
        client that sends one command and waits for its answer."""
        self._answers += [(marker, reply)] * times

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) passing bytes on: the server behind seems wedged."""
        if stalled:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def cut(self) -> None:
        """Hang up every open connection (new ones still follow ``blackhole``)."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.blackhole:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        losing = False

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            nonlocal losing
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    if up and self._answers and self._answers[0][0] in data:
                        writer.write(self._answers.pop(0)[1])
                        continue
                    if up and self._lose_after is not None and self._lose_after in data:
                        self._lose_after, losing = None, True
                    elif losing and not up:  # the server did it: hang up without the answer
                        self.replies_lost += 1
                        writer.close()
                        up_writer.close()
                        return
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
