"""PgBouncer in transaction pooling mode on a free loopback port, in front of a PostgreSQL, for
the tests and the benchmarks alike: the Debian package's binary (``scripts/test`` installs it
when missing), configured in a temporary directory of its own, stopped (and the directory
removed) by ``stop()``.

Its server pool is small (``POOL_SIZE`` connections per database and user, by default) so that
the gateway's connections really share server connections, transaction by transaction.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from benchmarks.launch import HOST, free_port

__all__ = ["POOL_SIZE", "PgBouncer", "find_pgbouncer", "through_pgbouncer"]

POOL_SIZE = 4
"""Server connections per database and user: fewer than one gateway pool's 10."""
START_TIMEOUT = 15.0


def find_pgbouncer() -> str | None:
    """The binary (Debian puts it in /usr/sbin, which a non-root PATH may lack)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


def through_pgbouncer(url: str, port: int, query: str = "statement_cache_size=0") -> str:
    """``url`` (a database on the upstream server) reached through PgBouncer on ``port``."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{HOST}:{port}" if user else f"{HOST}:{port}"
    return parts._replace(netloc=netloc, query=query).geturl()


class PgBouncer:
    """``with PgBouncer(binary, upstream_url) as bouncer:`` a running PgBouncer that passes every
    database name to the upstream server (``* = host=… port=…``), trusting the upstream URL's
    user. Its files live in a temporary directory of its own, removed by ``stop()``. PgBouncer
    refuses to run as root: as root it drops to the ``postgres`` account (``user =``)."""

    def __init__(self, binary: str, upstream_url: str, *, pool_size: int = POOL_SIZE) -> None:
        upstream = urlsplit(upstream_url)
        self._binary = binary
        self.pool_size = pool_size
        self._upstream = f"host={upstream.hostname or HOST} port={upstream.port or 5432}"
        self.user = upstream.username or "postgres"
        # Under /tmp itself: the account PgBouncer drops to must reach its files.
        self.directory = Path(tempfile.mkdtemp(prefix="tg-pgbouncer-"))
        self.directory.chmod(0o755)
        self.log = self.directory / "pgbouncer.log"
        self._spawn()

    def _spawn(self) -> None:
        self.port = free_port()
        run_as = f"user = {_unprivileged_account()}\n" if os.geteuid() == 0 else ""
        auth_file = self.directory / "userlist.txt"
        auth_file.write_text(f'"{self.user}" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            f"[databases]\n* = {self._upstream}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {auth_file}\nadmin_users = {self.user}\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\n"
            f"max_client_conn = 500\n{run_as}"
        )
        with self.log.open("ab") as log:
            self._log_start = log.tell()
            self.process = subprocess.Popen(
                [self._binary, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        """Until PgBouncer accepts connections (polled, with a deadline); if another process
        took its port meanwhile, it starts again on another (twice at most)."""
        deadline = time.monotonic() + START_TIMEOUT
        respawns = 2
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.output() and respawns:
                    respawns -= 1
                    self._spawn()
                    continue
                raise RuntimeError(f"pgbouncer exited: {self.output()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer not listening after {START_TIMEOUT} s: {self.output()}")

    def url(self, upstream_database_url: str, query: str = "statement_cache_size=0") -> str:
        """The upstream database through this PgBouncer."""
        return through_pgbouncer(upstream_database_url, self.port, query)

    def output(self) -> str:
        """What PgBouncer logged since its last start."""
        with self.log.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: immediate shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _unprivileged_account() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("pgbouncer will not run as root, and there is no postgres or nobody user")
