"""A throw-away Redis Cluster on free loopback ports, for the tests and the benchmarks alike.

``LocalCluster(primaries=3)`` starts that many ``redis-server --cluster-enabled yes`` in a temp
directory (no persistence), joins them with ``redis-cli --cluster create`` (no replicas) and
waits until every node says ``cluster_state:ok``. ``url`` is the gateway's
``redis+cluster://`` URL; ``kill(port)`` ends one node's process as a crash would (SIGKILL) and
``restart(port)`` brings it back with its cluster configuration (its slots) but no data, as a
node without persistence comes back. ``stop()`` ends them all and removes the directory.

``tls=<directory>``: every node speaks TLS only (clients and cluster bus), with the
``server.pem``/``server.key``, ``client.pem``/``client.key`` (a node's, on the bus) and ``ca.pem``
found there (clients are not asked for certificates), and
``url`` is ``rediss+cluster://…?ssl_ca_certs=…``.

``require_full_coverage=False`` is ``cluster-require-full-coverage no``: the other primaries go
on serving their slots while one is down. (With Redis's default, ``yes``, a primary lost with no
replica to promote stops the whole cluster.)

For failover drills: ``add_replica(port)`` gives a primary a replica (its port is in
``replica_ports``, not in ``ports``, which stay the nodes created as primaries), and the cluster
promotes it when its primary fails (``node_timeout_ms`` sets how soon); ``cut_off(replica)``
stops a replica's replication, keeping the data it has (as a partition would, and still
eligible for promotion); ``save(port)`` writes a node's dump and ``restart(port,
from_dump=True)`` starts it again from that dump rather than empty; ``role(port)`` and
``replicas_of(port)`` tell what the cluster says now.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalCluster", "cluster_ports"]

HOST = "127.0.0.1"
_BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def cluster_ports(count: int) -> list[int]:
    """``count`` loopback ports free now whose cluster-bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port + _BUS_OFFSET < 65_536 and port not in ports and _free(port + _BUS_OFFSET):
            ports.append(port)
    return ports


class LocalCluster:
    def __init__(
        self,
        primaries: int = 3,
        *,
        require_full_coverage: bool = False,
        node_timeout_ms: int = 2000,
        ready_timeout: float = 60.0,
        tls: Path | None = None,
    ) -> None:
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed")
        self.directory = Path(tempfile.mkdtemp(prefix="tg-cluster-"))
        self.ports = cluster_ports(primaries)
        self._options = (
            "--cluster-require-full-coverage", "yes" if require_full_coverage else "no",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--repl-diskless-sync-delay", "0",  # a new replica's first sync starts at once
        )  # fmt: skip
        self._ready_timeout = ready_timeout
        self._tls = tls
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.replica_ports: list[int] = []
        try:
            for port in self.ports:
                self._start(port)
            for port in self.ports:
                self._wait_answering(port)
            created = subprocess.run(
                ["redis-cli", *self._cli_tls(), "--cluster", "create"]
                + [f"{HOST}:{port}" for port in self.ports]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=ready_timeout,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        nodes = ",".join(f"{HOST}:{port}" for port in self.ports)
        if self._tls is None:
            return f"redis+cluster://{nodes}"
        return f"rediss+cluster://{nodes}?ssl_ca_certs={self._tls / 'ca.pem'}"

    def _cli_tls(self) -> list[str]:
        return [] if self._tls is None else ["--tls", "--cacert", str(self._tls / "ca.pem")]

    def _server_tls(self, port: int) -> list[str]:
        if self._tls is None:
            return ["--port", str(port)]
        return ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes"] + [
            "--tls-cert-file", str(self._tls / "server.pem"),
            "--tls-key-file", str(self._tls / "server.key"),
            "--tls-ca-cert-file", str(self._tls / "ca.pem"),
            "--tls-auth-clients", "no",
            # what a node shows the others on the cluster bus, where it is their client
            "--tls-client-cert-file", str(self._tls / "client.pem"),
            "--tls-client-key-file", str(self._tls / "client.key"),
        ]  # fmt: skip

    def _start(self, port: int) -> None:
        log = (self.directory / f"{port}.log").open("ab")
        self.processes[port] = subprocess.Popen(
            ["redis-server", *self._server_tls(port), "--bind", HOST, "--cluster-enabled", "yes"]
            + ["--cluster-config-file", f"nodes-{port}.conf", "--dir", str(self.directory)]
            + ["--save", "", "--appendonly", "no", "--dbfilename", f"dump-{port}.rdb"]
            + list(self._options),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def cli(self, port: int, *command: str) -> str:
        """``redis-cli -p port command…``: its output ("" if the node does not answer)."""
        done = subprocess.run(
            ["redis-cli", *self._cli_tls(), "-h", HOST, "-p", str(port), *command],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout if done.returncode == 0 else ""

    def _wait_answering(self, port: int) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while self.cli(port, "PING").strip() != "PONG":
            if self.processes[port].poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited:\n{self.log(port)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not answer:\n{self.log(port)}")
            time.sleep(0.05)

    def state(self, port: int) -> str:
        """The node's ``cluster_state`` (``ok``, ``fail``), or "" when it does not answer."""
        for line in self.cli(port, "CLUSTER", "INFO").splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return ""

    def wait_ok(self, ports: list[int] | None = None) -> None:
        """Until every running node (or those of ``ports``) says ``cluster_state:ok``."""
        deadline = time.monotonic() + self._ready_timeout
        for port in ports or [p for p, run in self.processes.items() if run.poll() is None]:
            while self.state(port) != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {port}: cluster_state not ok:\n{self.log(port)}")
                time.sleep(0.05)

    def wait_settled(self) -> None:
        """Until every running node says ``cluster_state:ok`` and sees the same primaries."""
        deadline = time.monotonic() + self._ready_timeout
        self.wait_ok()
        running = [port for port, process in self.processes.items() if process.poll() is None]
        while len({frozenset(self._primary_ids(port)) for port in running}) != 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes never agreed on the primaries")
            time.sleep(0.05)

    def _primary_ids(self, port: int) -> list[str]:
        return [
            fields[0]
            for fields in self._nodes(port)
            if len(fields) > 2 and "master" in fields[2] and "fail" not in fields[2]
        ]

    def log(self, port: int) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / f"{port}.log").read_text(errors="replace")[-4000:]
        return ""

    def slot_owner(self, slot: int) -> int:
        """The port of the primary serving ``slot``, as the first node that answers sees it."""
        for port in self.ports:
            reply = self.cli(port, "CLUSTER", "SLOTS").split()
            for at in range(0, len(reply) - 3):
                start, end = reply[at], reply[at + 1]
                if start.isdigit() and end.isdigit() and int(start) <= slot <= int(end):
                    return int(reply[at + 3])
        raise RuntimeError(f"no node serves slot {slot}")

    def kill(self, port: int) -> None:
        """End the node's process at once, as a crash would."""
        process = self.processes[port]
        process.kill()
        process.wait()

    def restart(self, port: int, *, from_dump: bool = False) -> None:
        """Start a killed node again (its slots, no data unless ``from_dump``: the dump
        ``save`` wrote) and wait until it serves them."""
        if not from_dump:
            (self.directory / f"dump-{port}.rdb").unlink(missing_ok=True)
        self._start(port)
        self._wait_answering(port)
        self.wait_ok([port])

    def save(self, port: int) -> None:
        """Write the node's dump now (``SAVE``)."""
        if self.cli(port, "SAVE").strip() != "OK":
            raise RuntimeError(f"node {port}: SAVE failed:\n{self.log(port)}")

    def _node_id(self, port: int) -> str:
        return self.cli(port, "CLUSTER", "MYID").strip()

    def _nodes(self, port: int) -> list[list[str]]:
        """``CLUSTER NODES`` as the node sees it: one list of fields per node."""
        return [line.split() for line in self.cli(port, "CLUSTER", "NODES").splitlines()]

    def role(self, port: int) -> str:
        """``master`` or ``slave``, as the node says ("" when it does not answer)."""
        for line in self.cli(port, "INFO", "replication").splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return ""

    def replicas_of(self, port: int) -> list[int]:
        """The ports of the node's replicas, as the node itself sees them."""
        mine = self._node_id(port)
        return [
            int(fields[1].split("@")[0].rpartition(":")[2])
            for fields in self._nodes(port)
            if len(fields) > 3 and fields[3] == mine and "fail" not in fields[2]
        ]

    def add_replica(self, primary: int) -> int:
        """Start a node, make it a replica of ``primary`` and wait until it is in sync."""
        port = next(p for p in cluster_ports(8) if p not in self.processes)
        self._start(port)
        self.replica_ports.append(port)
        self._wait_answering(port)
        self.cli(port, "CLUSTER", "MEET", HOST, str(primary))
        primary_id = self._node_id(primary)
        deadline = time.monotonic() + self._ready_timeout
        while self.cli(port, "CLUSTER", "REPLICATE", primary_id).strip() != "OK":
            if time.monotonic() > deadline:  # it does not know the primary yet: gossip
                raise RuntimeError(f"node {port} never became a replica:\n{self.log(port)}")
            time.sleep(0.1)
        while "master_link_status:up" not in self.cli(port, "INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {port} never synced:\n{self.log(port)}")
            time.sleep(0.05)
        # Every primary must know it as the primary's replica, or none would vote for it.
        mine = self._node_id(port)
        for other in [p for p, run in self.processes.items() if run.poll() is None]:
            while not any(
                fields[0] == mine and fields[3] == primary_id for fields in self._nodes(other)
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {other} never heard of replica {port}")
                time.sleep(0.05)
        self.wait_ok([port, primary])
        return port

    def cut_off(self, replica: int) -> None:
        """Stop the replica's replication for good, keeping the data it has: it is given a
        wrong password for its primary (which has none, so refuses it) and disconnected; it
        stays eligible for promotion however old its data gets."""
        self.cli(replica, "CONFIG", "SET", "masterauth", "not-the-password")
        self.cli(replica, "CONFIG", "SET", "cluster-replica-validity-factor", "0")
        info = self.cli(replica, "INFO", "replication").splitlines()
        primary = next(line.split(":", 1)[1] for line in info if line.startswith("master_port:"))
        self.cli(int(primary), "CLIENT", "KILL", "TYPE", "replica")
        deadline = time.monotonic() + self._ready_timeout
        while "master_link_status:up" in self.cli(replica, "INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {replica} still replicating:\n{self.log(replica)}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
