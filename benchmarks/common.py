"""Helpers the benchmark scripts share: throw-away databases and Redis keys of a run, tenants
registered over HTTP, CPU time from /proc, and the result tables. (Servers: ``launch.py``;
load: ``load.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import redis

__all__ = [
    "ADMIN",
    "PG_ADMIN_URL",
    "check_redis",
    "cpu_seconds",
    "create_database",
    "delete_redis_keys",
    "drop_database",
    "ensure_installed",
    "http_json",
    "markdown_table",
    "read_usage",
    "register",
    "scratch_stores",
    "text_table",
    "verdict",
]

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN = "/api/v1/tenants"
_TICKS = os.sysconf("SC_CLK_TCK")


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


def register(base: str, name: str, plan: str, admin_email: str) -> tuple[str, str]:
    """A new tenant through the admin API of the server at ``base``: (tenant id, API key)."""
    body = {"name": name, "plan": plan, "admin_email": admin_email}
    answer = http_json("POST", f"{base}{ADMIN}/register", body)
    return str(answer["id"]), str(answer["api_key"])


def read_usage(base: str, tenant_id: str, key: str) -> dict[str, Any]:
    """The tenant's usage report from the server at ``base`` (``GET …/{id}/usage``)."""
    return http_json("GET", f"{base}{ADMIN}/{tenant_id}/usage", key=key)


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


@contextlib.contextmanager
def scratch_stores(name: str, redis_url: str) -> Iterator[tuple[str, str, Path]]:
    """A throw-away database ``tg_<name>_<token>``, a Redis key prefix ``<name>:<token>:`` and a
    temporary directory, all removed at the end: (database URL, prefix, directory)."""
    token = os.urandom(4).hex()
    database, prefix = f"tg_{name}_{token}", f"{name}:{token}:"
    check_redis(redis_url)
    database_url = create_database(database)
    try:
        with tempfile.TemporaryDirectory(prefix=f"tg-{name}-") as tmp:
            yield database_url, prefix, Path(tmp)
    finally:
        try:
            deleted = delete_redis_keys(redis_url, prefix + "*")
            db = redis_url.rsplit("/", 1)[-1]
            print(f"deleted {deleted} Redis keys under {prefix!r} (db {db})", flush=True)
        except redis.RedisError as exc:
            print(f"could not delete Redis keys under {prefix!r}: {exc}", flush=True)
        drop_database(database)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], rule: bool = False) -> str:
    """Columns padded to width: the first left-aligned, the others right-aligned; with
    ``rule``, a line of dashes under the headers."""
    table = [tuple(headers), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    if rule:
        table.insert(1, tuple("-" * width for width in widths))
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


def verdict(failures: Sequence[str], passed: str) -> int:
    """Print ``FAIL:`` and the failures, or ``PASS:`` and what passed; the exit status."""
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS: " + passed)
    return 0
