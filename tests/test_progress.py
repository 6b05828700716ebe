"""Progress of ``export``, ``import`` and ``billing close``: one line redrawn on a terminal
(run here under a pseudo-terminal), nothing when stderr is not one or with ``--quiet``, and
never a byte of it in the export stream on stdout."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from benchmarks.launch import CLI
from tenant_gateway import TenantGateway
from tenant_gateway.clock import Period
from tenant_gateway.demo import build_demo_app, create_projects_table
from tenant_gateway.progress import Progress, format_bytes

from .conftest import FakeClock
from .helpers import as_admin, register_as

ROWS = 5000


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_counts_rates_and_time_left() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    out = io.StringIO()
    progress = Progress("import t", out, total=1000, clock=clock, width=lambda: 200)
    progress.add(100, 1024 * 1024)  # the first is drawn at once
    clock.advance(0.1)
    progress.add(100, 1024 * 1024)  # within the interval: not redrawn
    clock.advance(0.9)
    progress.add(50, 0)
    progress.close()
    assert out.getvalue().split("\x1b[K") == [
        "\rimport t: 100 / 1,000 rows (10%) · 1 MiB",  # no rate over an instant
        "\rimport t: 250 / 1,000 rows (25%) · 2 MiB · 250 rows/s, 2 MiB/s · ETA 3.0 s",
        "\rimport t: 250 / 1,000 rows (25%) · 2 MiB · in 1.0 s · 250 rows/s, 2 MiB/s",
        "\n",
    ]


def test_without_a_total_or_bytes_and_cut_to_the_terminal() -> None:
    clock = FakeClock()
    out = io.StringIO()
    with Progress("close", out, unit="tenants", clock=clock, width=lambda: 30) as progress:
        clock.advance(2)
        progress.add(4)
    assert out.getvalue() == (
        "\rclose: 4 tenants · 2 tenants/\x1b[K"  # 29 characters: a wrap would break \r
        "\rclose: 4 tenants · in 2.0 s ·\x1b[K\n"
    )


def test_shown_only_on_a_terminal_and_not_quiet() -> None:
    for stream, quiet, shown in (
        (Tty(), False, True),
        (Tty(), True, False),
        (io.StringIO(), False, False),
    ):
        with Progress.on_terminal("export t", quiet=quiet, stream=stream) as progress:
            progress.add(3, 10)
        assert progress.enabled is False  # closed
        assert bool(stream.getvalue()) is shown
        assert ("export t: 3 rows · 10 B" in stream.getvalue()) is shown


def test_sizes_and_durations() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536, 10 * 1024**2, 3 * 1024**4)] == [
        "0 B",
        "1,023 B",
        "1 KiB",
        "1.5 KiB",
        "10 MiB",
        "3,072 GiB",
    ]
    clock = FakeClock()
    progress = Progress("x", None, total=10_000, clock=clock)
    clock.advance(1)
    progress.add(1)
    assert progress.line(clock()).endswith("ETA 2 h 46 min")
    clock.advance(99)
    assert progress.line(clock(), final=True).endswith("in 1 min 40 s · 0 rows/s")


# -- the commands, as processes -------------------------------------------------------------


def _run(
    args: list[str], *, terminal: bool, stdin: bytes = b"", columns: int = 250
) -> tuple[int, bytes, str]:
    """``tenant-gateway *args``: (exit status, stdout, stderr), with stderr on a
    pseudo-terminal of ``columns`` when ``terminal``, else on a pipe."""
    if not terminal:
        done = subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=120)
        return done.returncode, done.stdout, done.stderr.decode()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal's other side is closed
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with subprocess.Popen(
            [*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave
        ) as process:
            os.close(slave)
            out, _ = process.communicate(stdin, timeout=120)
        reader.join(timeout=30)
    finally:
        os.close(master)
    return process.returncode, out, b"".join(seen).decode()


def _lines(terminal: str) -> list[str]:
    """The progress lines drawn, in order (each redraw starts with a carriage return)."""
    return [line for line in re.split(r"[\r\n]+", terminal.replace("\x1b[K", "")) if line]


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """A database of this test's own: the shared one holds other tests' tenants, on plans of
    their own that ``billing close`` would (rightly) complain of on stderr."""
    name = f"tg_test_progress_{uuid.uuid4().hex[:10]}"
    asyncio.run(as_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def two_tenants(own_database: str) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any]]]:
    """A source tenant with ``ROWS`` projects and an empty destination tenant."""
    postgres_url = own_database
    gateway = TenantGateway(build_demo_app(postgres_url), database_url=postgres_url)
    await gateway.startup()
    try:
        await create_projects_table(postgres_url)
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            source = await register_as(client, "src@progress.io")
            destination = await register_as(client, "dst@progress.io")
        conn = await asyncpg.connect(postgres_url)  # a superuser: row-level security aside
        try:
            await conn.execute(
                "INSERT INTO projects (tenant_id, id, name)"
                " SELECT $1, 'p' || n, 'project ' || n FROM generate_series(1, $2) n",
                source["id"],
                ROWS,
            )
        finally:
            await conn.close()
        yield source, destination
    finally:
        await gateway.shutdown()


async def test_export_and_import_show_progress_on_a_terminal_only(
    two_tenants: tuple[dict[str, Any], dict[str, Any]], own_database: str
) -> None:
    postgres_url = own_database
    source, destination = two_tenants
    export = ["export", "--tenant", source["id"], "--database-url", postgres_url]
    status, stream, stderr = _run(export, terminal=False)
    assert status == 0 and stderr == ""
    header = json.loads(stream.split(b"\n", 1)[0])
    rows = sum(table["rows"] for table in header["tables"])
    assert rows == stream.count(b"\n") - 1 and rows > ROWS

    status, on_terminal, drawn = _run(export, terminal=True)
    assert status == 0
    assert on_terminal.split(b"\n")[1:] == stream.split(b"\n")[1:]  # stdout: the stream alone
    final = _lines(drawn)[-1]
    size = format_bytes(len(on_terminal))
    assert final.startswith(
        f"export {source['id']}: {rows:,} / {rows:,} rows (100%) · {size} · in "
    )
    assert _run([*export, "--quiet"], terminal=True)[2] == ""

    load = ["import", "--tenant", destination["id"], "--database-url", postgres_url]
    status, summary, stderr = _run([*load, "--dry-run"], terminal=False, stdin=stream)
    assert status == 0 and stderr == "" and json.loads(summary)["dry_run"] is True
    status, summary, stderr = _run([*load, "--dry-run", "-q"], terminal=True, stdin=stream)
    assert status == 0 and stderr == "" and json.loads(summary)["dry_run"] is True
    status, summary, drawn = _run(load, terminal=True, stdin=stream)
    assert status == 0 and json.loads(summary)["imported"]["projects"] == ROWS
    lines = _lines(drawn)
    assert lines[-1].startswith(f"import {destination['id']}: {rows:,} / {rows:,} rows (100%)")
    assert all(re.match(rf"import {destination['id']}: [\d,]+ / {rows:,} rows", x) for x in lines)


async def test_billing_close_shows_tenants_on_a_terminal_only(
    two_tenants: tuple[dict[str, Any], dict[str, Any]], own_database: str
) -> None:
    postgres_url = own_database
    period = str(Period.containing(datetime.now(UTC).timestamp()).previous)
    close = ["billing", "close", "--period", period, "--database-url", postgres_url]
    status, out, drawn = _run(close, terminal=True)
    assert status == 0 and out.decode().startswith(f"tenant-gateway: {period} closed")
    final = _lines(drawn)[-1]
    match = re.match(rf"billing close {period}: ([\d,]+) tenants · in [\d.]+ s", final)
    assert match is not None and int(match[1].replace(",", "")) >= 2, final
    status, out, stderr = _run(close, terminal=False)
    assert status == 0 and stderr == ""
    assert _run([*close, "--quiet"], terminal=True)[2] == ""
