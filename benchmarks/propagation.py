"""How long a revoked key keeps working: ``serve --workers 2`` on PostgreSQL + Redis.

Not run in CI. ``.venv/bin/python -m benchmarks.propagation [--rounds 20]``

The gateway bounds it at one second on every worker process (docs/security.md). For each cache
setting it starts the server (a throw-away ``tg_prop_*`` database, a private Redis prefix in db
11), then, each round, creates a key, warms it on both workers (40 calls on fresh connections,
which the kernel spreads over the two processes), revokes it and calls again on fresh
connections until every call answers 401. The figure is the time from the revocation's 204 to
the start of the first round of calls that were all refused. Three settings of the key cache:

- ``ttl=1 long=60`` (the default): a cached key is trusted a minute while the worker's Redis
  subscription is confirmed, so the pub/sub eviction refuses it (the 1 s is the backstop);
- ``ttl=1 long=1``: trusted a second at most, so the cache lifetime and the eviction race;
- ``ttl=3600``: trusted for an hour whatever happens, so only the eviction can refuse it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from benchmarks.common import ADMIN, http_json, register, scratch_stores, text_table
from benchmarks.launch import Server

REDIS_URL = "redis://127.0.0.1:6379/11"
FRESH_CALLS = 40


async def statuses(base: str, key: str) -> list[int]:
    async def one() -> int:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:  # a new connection
            response = await client.get("/api/v1/projects", headers={"X-API-Key": key})
            return response.status_code

    return list(await asyncio.gather(*(one() for _ in range(FRESH_CALLS))))


async def one_round(base: str, tenant: str, owner: str) -> float:
    """Seconds from a revocation's answer to the first round of calls all refused."""
    key = http_json("POST", f"{base}{ADMIN}/{tenant}/keys", {"role": "developer"}, owner)
    if set(await statuses(base, key["api_key"])) != {200}:
        raise RuntimeError("a fresh key was refused before its revocation")
    async with httpx.AsyncClient(base_url=base) as admin:
        revoked = await admin.delete(
            f"{ADMIN}/{tenant}/keys/{key['id']}", headers={"Authorization": f"Bearer {owner}"}
        )
    revoked_at = time.monotonic()
    if revoked.status_code != 204:
        raise RuntimeError(f"revocation answered {revoked.status_code}")
    while True:
        started = time.monotonic() - revoked_at
        if set(await statuses(base, key["api_key"])) == {401}:
            return started
        if started > 30:
            raise RuntimeError("the revoked key still works after 30 s")


def measure(
    ttls: tuple[float, float], rounds: int, database_url: str, prefix: str, log: Path
) -> list[float]:
    with Server(
        "--database-url", database_url, "--redis-url", REDIS_URL, "--redis-key-prefix", prefix,
        "--workers", "2", "--key-cache-ttl", str(ttls[0]), "--key-cache-long-ttl", str(ttls[1]),
        log=log,
    ) as server:  # fmt: skip
        tenant, owner = register(server.base, "Prop", "enterprise", "p@prop.io")
        return [asyncio.run(one_round(server.base, tenant, owner)) for _ in range(rounds)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    rows = []
    with scratch_stores("prop", REDIS_URL) as (database_url, prefix, tmp):
        for ttls in ((1.0, 60.0), (1.0, 1.0), (3600.0, 3600.0)):
            times = measure(ttls, args.rounds, database_url, prefix, tmp / "log")
            ms = sorted(t * 1000 for t in times)
            rows.append(
                (
                    f"ttl={ttls[0]:g} long={ttls[1]:g}",
                    str(len(ms)),
                    f"{statistics.median(ms):.0f}",
                    f"{ms[-1]:.0f}",
                    str(sum(t >= 1000 for t in ms)),
                )
            )
    print(text_table(("cache", "rounds", "median ms", "max ms", "rounds ≥ 1 s"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
