"""``tenant-gateway serve`` over real HTTP: ``/metrics`` summed across worker processes, JSON
logs that never hold a key, and the flags' one-line errors."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from benchmarks.launch import Server, run_cli

from .conftest import JWT_SECRET, operator_headers
from .test_metrics import Samples, parse, value

pytestmark = pytest.mark.slow

PLANS = (
    '{"plans": {"metered": {"max_users": 5, "monthly_calls": 150,'
    ' "burst_per_second": null, "price_cents": 0}}}'
)


async def scrape(server: Server) -> Samples:
    async with httpx.AsyncClient(base_url=server.base) as client:  # a new connection each time
        response = await client.get("/metrics", headers=operator_headers())
    assert response.status_code == 200, response.text
    return parse(response.text)


def admitted_by_worker(directory: Path) -> dict[str, float]:
    """Each worker's own count of admitted calls, from its file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == "tenant_gateway_calls_admitted_total":
                    counts[path.stem] = sample.value
    return counts


async def test_scraped_totals_add_up_across_worker_processes(
    tmp_path: Path, real_stores: tuple[str, ...]
) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text(PLANS)
    server = Server(
        *real_stores,
        "--plans", str(plans),
        "--workers", "2",
        "--flush-interval", "0.2",
        "--metrics-require-operator",
        env={"TMPDIR": str(tmp_path), "TG_ADMIN_JWT_SECRET": JWT_SECRET},
    )  # fmt: skip
    try:
        server.wait_ready()
        (directory,) = tmp_path.glob("tg-metrics-*")  # serve's own, for this run
        async with httpx.AsyncClient(base_url=server.base) as client:
            body = {"name": "M", "plan": "metered", "admin_email": "m@m.io"}
            tenant = (await client.post("/api/v1/tenants/register", json=body)).json()
        headers = {"X-API-Key": tenant["api_key"]}
        statuses: list[int] = []

        async def caller() -> None:
            while len(statuses) < 200:
                async with httpx.AsyncClient(base_url=server.base) as client:  # either worker
                    statuses.append(
                        (await client.get("/api/v1/projects", headers=headers)).status_code
                    )

        await asyncio.gather(*(caller() for _ in range(16)))
        assert statuses.count(200) == 150 and statuses.count(429) == len(statuses) - 150
        expected = {
            ("tenant_gateway_calls_admitted_total", (("plan", "metered"),)): 150,
            (
                "tenant_gateway_calls_refused_total",
                (("plan", "metered"), ("reason", "quota_exceeded")),
            ): len(statuses) - 150,
        }
        deadline = time.monotonic() + 15
        while True:  # each worker writes its numbers every flush interval
            samples = await scrape(server)
            found = {key: value(samples, key[0], **dict(key[1])) for key in expected}
            if found == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert found == expected
        assert value(samples, "tenant_gateway_quota_decision_seconds_count") == len(statuses)
        by_worker = admitted_by_worker(directory)
        assert len(by_worker) >= 2 and all(by_worker.values()), by_worker  # both served
        assert sum(by_worker.values()) == 150
        async with httpx.AsyncClient(base_url=server.base) as client:
            assert (await client.get("/metrics")).status_code == 401
    finally:
        log = server.stop()
    assert "Traceback" not in log, log
    assert not list(tmp_path.glob("tg-metrics-*"))  # removed after the run


@pytest.mark.parametrize("how", ["flag", "environment"])
async def test_json_logs_never_hold_a_key(how: str) -> None:
    if how == "flag":
        server = Server("--log-format", "json")
    else:
        server = Server(env={"TG_LOG_FORMAT": "json"})
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base) as client:
            body = {"name": "J", "admin_email": "j@j.io"}
            key = (await client.post("/api/v1/tenants/register", json=body)).json()["api_key"]
            assert (await client.get("/api/v1/projects", headers={"X-API-Key": key})).is_success
            await client.get(f"/api/v1/projects?api_key={key}")
            await client.get(f"/api/v1/projects/{key}", headers={"Authorization": f"Bearer {key}"})
    finally:
        log = server.stop()
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line
    assert key not in log and key[3:] not in log
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    paths = {(e["method"], e["path"], e["status"]) for e in access}
    assert ("GET", "/api/v1/projects?api_key=tk_…redacted", 401) in paths
    assert ("GET", "/api/v1/projects/tk_…redacted", 404) in paths
    assert all(e["time"].endswith("Z") and e["level"] == "info" for e in access)
    assert any(e["message"].startswith("tenant-gateway: serving") for e in entries)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--log-format", "xml"), "--log-format must be text or json, got 'xml'"),
        (("--metrics-path", "metrics"), "--metrics-path must start with '/'"),
        (("--metrics-require-operator",), "set TG_ADMIN_JWT_SECRET"),
        (
            ("--metrics-path", "", "--metrics-require-operator"),
            "--metrics-require-operator has no metrics to protect",
        ),
    ],
)
def test_bad_operations_flags_are_one_clear_line(args: tuple[str, ...], message: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
