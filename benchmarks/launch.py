"""Servers on a free loopback port, for the tests and the benchmarks alike.

``Server(*args)`` runs ``tenant-gateway serve --host 127.0.0.1 --port <free> *args``; a
``command`` runs anything else that takes ``--host`` and ``--port`` (``run.py``: uvicorn with a
benchmark app), or the flags its ``address`` spells (daphne, hypercorn), behind a ``prefix``
(``taskset``, valgrind). Each server runs in a process group of its own, so ``stop()`` reaches
every worker; its output goes to a log that ``stop()`` returns.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["CLI", "HOST", "REPO", "Server", "free_port", "log_problems", "run_cli"]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
CLI = (sys.executable, "-m", "tenant_gateway.cli")
SERVE = (*CLI, "serve")
RESPAWNS = 2
"""How often a server whose port was taken between choosing and binding it starts again."""


def host_and_port(host: str, port: int) -> list[str]:
    """How ``tenant-gateway serve`` and uvicorn are told where to listen."""
    return ["--host", host, "--port", str(port)]


def free_port() -> int:
    """A loopback port nothing listens on now (something else may take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``tenant-gateway *args`` to completion, its output captured."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def log_problems(log: str) -> list[str]:
    """Tracebacks and 5xx access-log lines of a server's log (uvicorn logs requests at
    ``info``)."""
    return [
        line
        for line in log.splitlines()
        if "Traceback" in line or re.search(r'HTTP/1\.[01]" 5\d\d ', line)
    ]


class Server:
    """A server process on a free loopback port.

    ``env`` is added to this process's environment; ``log`` is appended to (default: a file
    of its own in ``$TMPDIR``). Ready when ``ready_path`` gets any HTTP answer (the gateway's
    liveness route by default, which touches no store and counts nothing), within
    ``ready_timeout`` seconds."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = SERVE,
        prefix: Sequence[str] = (),
        cwd: Path | None = None,
        log: Path | None = None,
        ready_path: str = "/healthz",
        ready_timeout: float = 60.0,
        address: Callable[[str, int], Sequence[str]] = host_and_port,
    ) -> None:
        self._command = [*prefix, *command]
        self._address = address
        self._args, self._env, self._cwd = args, env, cwd
        self._log_path, self._ready_path, self._ready_timeout = log, ready_path, ready_timeout
        self._spawn()

    def _spawn(self) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log = self._log_path or Path(os.environ.get("TMPDIR", "/tmp")) / (
            f"tg-serve-{self.port}.log"
        )
        with self.log.open("ab") as log_file:
            self._log_start = log_file.tell()
            self.process = subprocess.Popen(
                [*self._command, *self._address(HOST, self.port), *self._args],
                cwd=self._cwd,
                env={**os.environ, **(self._env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches every worker
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        """Until the server answers. If something else on the machine took the port between
        choosing and binding it, the server starts again on another (twice at most)."""
        deadline = time.monotonic() + self._ready_timeout
        respawns = RESPAWNS
        url = self.base + self._ready_path
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.stop()
                if "address already in use" in log and respawns:
                    respawns -= 1
                    self._spawn()
                    continue
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{log}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is up
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise RuntimeError(f"server not ready after {self._ready_timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM (uvicorn drains, the gateway flushes usage), SIGKILL to the whole group if it
        has not exited within ``timeout`` or left a worker behind; the server's log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.output()

    def output(self) -> str:
        """What this server (since its last start) has written to its log."""
        with self.log.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def __enter__(self) -> Server:
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
