"""Helpers the benchmark scripts share: loopback ports, throw-away databases, Redis keys of a
run, and the result tables."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import redis

__all__ = [
    "HOST",
    "PG_ADMIN_URL",
    "build_compiled",
    "check_redis",
    "create_database",
    "delete_redis_keys",
    "drop_database",
    "ensure_installed",
    "free_port",
    "http_json",
    "markdown_table",
    "text_table",
]

HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    print("+ " + " ".join(command), flush=True)
    return subprocess.run(command, check=False, timeout=900, text=True, capture_output=True)


def ensure_installed(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` with apt-get if it is missing
    (a load generator or profiler the benchmarks need, not a Python package)."""
    found = shutil.which(command)
    if found:
        return found
    print(f"{command} is not installed; installing {package} with apt-get", flush=True)
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise SystemExit(f"{command} is missing and apt-get needs root (no sudo found)")
        prefix = ["sudo"]
    install = [*prefix, "apt-get", "install", "-y", package]
    attempt = _run(install)
    if attempt.returncode != 0:
        update = _run([*prefix, "apt-get", "update"])
        if update.returncode != 0:
            raise SystemExit(f"apt-get update failed:\n{update.stderr}")
        attempt = _run(install)
        if attempt.returncode != 0:
            raise SystemExit(f"apt-get install {package} failed:\n{attempt.stderr}")
    found = shutil.which(command)
    if found is None:
        raise SystemExit(f"apt-get reported success but {command} is not on PATH")
    print(f"installed {found}", flush=True)
    return found


def build_compiled(repo: Path, into: Path) -> Path:
    """The package with its hot path compiled by mypyc (``setup.py``), plus ``benchmarks/``,
    installed under ``into``: serve from that directory (``python -m`` puts it first on the
    path) to measure the compiled build instead of the checkout."""
    target = into / "compiled"
    print(f"building the mypyc-compiled package into {target} (about a minute)", flush=True)
    built = subprocess.run(
        [str(repo / "scripts" / "build-compiled"), str(target)],
        check=False, text=True, capture_output=True, timeout=900,
    )  # fmt: skip
    if built.returncode != 0:
        raise SystemExit(f"the compiled build failed:\n{built.stdout}{built.stderr}")
    shutil.copytree(repo / "benchmarks", target / "benchmarks")
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def _postgres_execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql, timeout=60)
    finally:
        await conn.close()


def create_database(name: str) -> str:
    asyncio.run(_postgres_execute(f'CREATE DATABASE "{name}"'))
    print(f"created database {name}", flush=True)
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    asyncio.run(_postgres_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"dropped database {name}", flush=True)


def http_json(
    method: str, url: str, body: dict[str, Any] | None = None, key: str | None = None
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url} → {exc.code}: {exc.read().decode()}") from exc


def check_redis(url: str) -> None:
    """Raise (redis.RedisError) unless Redis at ``url`` answers."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.ping()
    finally:
        client.close()


def delete_redis_keys(url: str, *patterns: str) -> int:
    """Delete the keys matching any of ``patterns``; how many went."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        deleted = 0
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                deleted += int(client.delete(*keys))
        return deleted
    finally:
        client.close()


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to width: the first left-aligned, the others right-aligned."""
    table = [tuple(headers), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    return "\n".join(
        "  ".join(value.rjust(width) if i else value.ljust(width)
                  for i, (value, width) in enumerate(zip(line, widths, strict=True)))
        for line in table
    )  # fmt: skip


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
