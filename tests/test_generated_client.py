"""A client generated from the served OpenAPI document works, with typed answers (issue 20).

``openapi-python-client`` generates a client (once per session, from the document a running
``tenant-gateway serve`` publishes, failing on any generator warning) into a temporary
directory; the test imports it and, against a running server on both stores, signs up,
reads usage as JSON and as CSV, and reads the invoice through it: answers are the generated
classes, their members attributes of the declared types, errors typed problems.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.launch import Server

pytestmark = pytest.mark.slow

PACKAGE = "tg_admin_client"
PREFIX = "/api/v1/tenants"
CONFIG = f"""\
package_name_override: {PACKAGE}
post_hooks: []
content_type_overrides:
  application/x-ndjson: application/octet-stream
"""
"""As docs/admin.md says to generate it; no formatting hooks (the code is only imported)."""


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Any]]:
    """``generated("api.tenants.register_tenant")``: a module of the generated client."""
    where = tmp_path_factory.mktemp("client")
    (where / "config.yaml").write_text(CONFIG)
    generator = Path(sys.executable).parent / "openapi-python-client"
    with Server() as server:
        run = subprocess.run(
            [
                str(generator),
                "generate",
                "--url",
                f"{server.base}{PREFIX}/openapi.json",
                "--config",
                str(where / "config.yaml"),
                "--meta",
                "none",
                "--output-path",
                str(where / PACKAGE),
                "--fail-on-warning",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(where))
    try:
        yield lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


@pytest.fixture(params=["memory", "real"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    store_args = request.getfixturevalue("real_stores") if request.param == "real" else ()
    with Server(*store_args) as running:
        yield running
        log = running.stop()
    assert "Traceback" not in log, log


def test_generated_client_signs_up_and_reads_usage_and_invoice(
    generated: Callable[[str], Any], server: Server
) -> None:
    client_module, models = generated("client"), generated("models")
    base_url = server.base + PREFIX
    anonymous = client_module.Client(base_url=base_url, raise_on_unexpected_status=True)
    body = models.RegisterRequest(name="Acme", admin_email="admin@acme.io", plan="free")
    tenant = generated("api.tenants.register_tenant").sync(client=anonymous, body=body)
    assert isinstance(tenant, models.RegisteredTenant)
    assert tenant.status is models.TenantStatus.ACTIVE and tenant.plan == "free"
    assert tenant.api_key.startswith("tk_") and isinstance(tenant.created_at, datetime)

    project = httpx.post(
        f"{server.base}/api/v1/projects",
        json={"name": "alpha"},
        headers={"Authorization": f"Bearer {tenant.api_key}"},
    )
    assert project.status_code == 201, project.text
    as_tenant = client_module.AuthenticatedClient(
        base_url=base_url, token=tenant.api_key, raise_on_unexpected_status=True
    )

    usage = generated("api.usage.get_usage").sync(tenant.id, client=as_tenant)
    assert isinstance(usage, models.UsageReport)
    assert (usage.tenant_id, usage.api_calls, usage.limit, usage.remaining) == (
        tenant.id,
        1,
        1000,
        999,
    )
    assert isinstance(usage.resets_at, datetime) and usage.users == 1
    (day,) = usage.by_day
    assert isinstance(day, models.UsageDay) and isinstance(day.date, date)
    assert (day.api_calls, day.rejected_calls) == (1, 0)
    (route,) = usage.by_route
    assert isinstance(route, models.UsageRoute)
    assert route.route == "POST /api/v1/projects" and route.by_status["2xx"] == 1

    csv = generated("api.usage.get_usage_csv").sync(tenant.id, client=as_tenant)
    assert isinstance(csv, str)
    lines = csv.splitlines()
    assert lines[0] == "period,dimension,key,status_class,api_calls,rejected_calls"
    assert lines[1] == f"{usage.period},total,{usage.period},,1,0"

    invoice = generated("api.billing.get_invoice").sync(tenant.id, client=as_tenant)
    assert isinstance(invoice, models.Invoice)
    assert invoice.status is models.InvoiceStatus.DRAFT and invoice.period == usage.period
    assert (invoice.currency, invoice.total_cents, invoice.api_calls) == ("USD", 0, 1)
    (line,) = invoice.lines
    assert isinstance(line, models.InvoiceLine) and line.plan == "free"
    assert isinstance(line.proration, models.Proration) and line.amount_cents == 0

    by_header = client_module.AuthenticatedClient(
        base_url=base_url, token=tenant.api_key, prefix="", auth_header_name="X-API-Key"
    )
    read = generated("api.tenants.get_tenant").sync(tenant.id, client=by_header)
    assert isinstance(read, models.Tenant) and read.id == tenant.id
    missing = generated("api.tenants.get_tenant").sync("tenant_nope", client=by_header)
    assert isinstance(missing, models.Problem)
    assert (missing.status, missing.code) == (404, "not_found")
