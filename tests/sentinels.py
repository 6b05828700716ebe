"""Private redis-servers for the tests that take Redis away: a lone server the test may restart
(``RedisProcess``), and a Sentinel group (``SentinelGroup``): a primary, a replica and three
sentinels, each on a free port of 127.0.0.1 in a temporary directory, without persistence.

Every wait is a poll with a deadline; a node is killed with SIGKILL, as a crash would."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import redis

from benchmarks.launch import free_port

SERVICE = "svc"
DOWN_AFTER_MS = 2000
"""How long the sentinels wait before they call a node down: on a busy machine a shorter wait
can take a node that is merely slow for dead, and fail over twice (promoting the old primary,
back empty, and making the new one its replica: every count lost)."""
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """``probe()`` until it returns something other than None (or False); raises with ``what``
    after ``timeout`` seconds. Errors from a server that is not up yet count as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            answer = probe()
            if answer is not None and answer is not False:
                return answer
            last = answer
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(0.05)


class NoRedisServer(Exception):
    """redis-server is not installed (the fixtures in ``conftest.py`` skip, or fail under CI)."""


class RedisProcess:
    """One redis-server (or sentinel) on a free port, started by ``start()``. With ``tls`` (a
    directory holding ``ca.pem``, ``server.pem`` and ``server.key``) it speaks TLS only, and
    replicates over TLS."""

    def __init__(
        self, directory: Path, name: str, args: Sequence[str] = (), tls: Path | None = None
    ) -> None:
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.tls = tls
        self._args = list(args)
        self.log = self.directory / "redis.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, executable: str) -> list[str]:
        return [
            executable,
            *self.listening(),
            "--save", "", "--appendonly", "no",
            "--dir", str(self.directory),
            *self._args,
        ]  # fmt: skip

    def listening(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port), "--bind", "127.0.0.1"]
        return [
            "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.tls / "server.pem"),
            "--tls-key-file", str(self.tls / "server.key"),
            "--tls-ca-cert-file", str(self.tls / "ca.pem"),
            "--tls-auth-clients", "no", "--tls-replication", "yes",
        ]  # fmt: skip

    def start(self, *, port: int | None = None, timeout: float = 30.0) -> None:
        """Start on ``port`` (again, after a kill), or on a free one; until it answers PING."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise NoRedisServer("redis-server is not on PATH")
        for _ in range(1 if port else 3):  # a free port may be taken before it is bound
            self.port = port or free_port()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command(executable), stdout=log, stderr=subprocess.STDOUT
                )
            try:
                poll(f"{self.name} answering", self._answers, timeout)
                return
            except AssertionError:
                output = self.stop()
                if "Address already in use" not in output or port:
                    raise AssertionError(f"{self.name} did not start:\n{output[-3000:]}") from None
        raise AssertionError(f"{self.name} found no free port:\n{self.log.read_text()[-3000:]}")

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited")
        with self.client() as client:
            return bool(client.ping())

    def client(self) -> redis.Redis:
        if self.tls is None:
            return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)
        return redis.Redis(
            port=self.port,
            socket_timeout=2,
            socket_connect_timeout=2,
            ssl=True,
            ssl_ca_certs=str(self.tls / "ca.pem"),
        )

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: gone at once, as in a crash (nothing written, connections reset)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> str:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Sentinel(RedisProcess):
    """A sentinel watching ``SERVICE`` on ``primary_port`` (quorum 2). It rewrites its own
    configuration file, as sentinels do."""

    def __init__(
        self, directory: Path, name: str, primary_port: int, tls: Path | None = None
    ) -> None:
        super().__init__(directory, name, tls=tls)
        self.config = self.directory / "sentinel.conf"
        self.config.write_text(
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )

    def command(self, executable: str) -> list[str]:
        return [
            executable, str(self.config), "--sentinel",
            *self.listening(), "--dir", str(self.directory),
        ]  # fmt: skip

    def primary(self) -> int | None:
        """The port this sentinel names as the service's primary."""
        with self.client() as client:
            address = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(address[1]) if address else None


class SentinelGroup:
    """Two data nodes (``nodes``: one primary, one replica of it) and three sentinels."""

    def __init__(self, directory: Path, tls: Path | None = None) -> None:
        self.directory = directory
        self.tls = tls
        self.nodes: list[RedisProcess] = []
        self.sentinels: list[Sentinel] = []

    def start(self) -> None:
        primary = RedisProcess(self.directory, "node-a", tls=self.tls)
        self.nodes.append(primary)
        primary.start()
        replica = RedisProcess(
            self.directory, "node-b", ["--replicaof", "127.0.0.1", str(primary.port)], self.tls
        )
        self.nodes.append(replica)
        replica.start()
        for n in range(3):
            sentinel = Sentinel(self.directory, f"sentinel-{n}", primary.port, self.tls)
            self.sentinels.append(sentinel)
            sentinel.start()
        poll("the sentinels seeing the primary, the replica and each other", self._watching, 60)

    def _watching(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(SERVICE)
            if state["flags"] != "master" or state["num-slaves"] < 1:
                return False
            if state["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
        with self.primary().client() as client:  # the replica is in sync
            return bool(client.info("replication").get("slave0", {}).get("state") == "online")

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        if self.tls is None:
            return f"redis+sentinel://{hosts}/{SERVICE}"
        return f"rediss+sentinel://{hosts}/{SERVICE}?ssl_ca_certs={self.tls / 'ca.pem'}"

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def agreed_primary(self) -> RedisProcess | None:
        """The node every sentinel names as the primary now (None while they disagree)."""
        ports = {sentinel.primary() for sentinel in self.sentinels}
        port = ports.pop() if len(ports) == 1 else None
        return None if port is None else self.node(port)

    def primary(self) -> RedisProcess:
        return poll("the sentinels agreeing on the primary", self.agreed_primary, 10)

    def replica(self) -> RedisProcess:
        primary = self.primary()
        return next(node for node in self.nodes if node is not primary)

    def wait_for_failover(self, old: RedisProcess, timeout: float = 30.0) -> RedisProcess:
        """Until every sentinel names another node than ``old`` and that node says it is the
        primary."""

        def promoted() -> RedisProcess | None:
            primary = self.agreed_primary()
            if primary is None or primary is old:
                return None
            with primary.client() as client:
                return primary if client.execute_command("ROLE")[0] == b"master" else None

        return poll("a replica promoted", promoted, timeout)

    def wait_for_replica(self, node: RedisProcess, timeout: float = 30.0) -> None:
        """Until ``node`` replicates the primary, in sync."""

        def replicating() -> bool:
            with node.client() as client:
                role = client.execute_command("ROLE")
            return bool(role[0] == b"slave" and role[3] == b"connected")

        poll(f"{node.name} a replica in sync", replicating, timeout)

    def switch_over(self) -> RedisProcess:
        """``SENTINEL FAILOVER``: the replica promoted, the primary (alive) made its replica;
        the new primary."""
        old = self.primary()
        with self.sentinels[0].client() as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = self.wait_for_failover(old)
        self.wait_for_replica(old)
        return new

    def stop(self) -> None:
        for process in [*self.sentinels, *self.nodes]:
            process.stop()
