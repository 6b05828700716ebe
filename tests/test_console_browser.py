"""The console in a real browser: Debian's headless chromium driven by Playwright, against a
gateway served over HTTP, on the embedded stores and on PostgreSQL + Redis.

A tenant with a synthetic month of usage (an injected clock) signs in with its key, reads its
chart (compared point by point with ``/usage``), creates and revokes a key, adds a user and
changes plan; an operator signs in with a token, finds tenants, suspends and resumes one; a
tenant named ``<script>alert(1)</script>`` renders as text. Screenshots of each page go to
``tmp_path``, or to the folder ``TG_CONSOLE_SCREENSHOTS`` names (``docs/screenshots`` for the
committed ones: the memory run writes them).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from tenant_gateway import TenantGateway
from tenant_gateway.console import CONTENT_SECURITY_POLICY

from .apps import echo_app
from .conftest import JWT_SECRET, FakeClock, Stores, unavailable
from .console_server import MONTH_START, serve_in_thread, synthetic_month

CHROMIUM = os.environ.get("TG_CHROMIUM", "/usr/bin/chromium")
CONSOLE = "/api/v1/tenants/console"
XSS = "<script>alert(1)</script>"
_WIDEST = """[...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > 391)
  .filter(e => !(e.parentElement && e.parentElement.closest('.scroll')))
  .map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)"""
"""What sticks out of a phone's width, but for the content of the tables' scrolling boxes."""
_OTHERS = [
    ("Quill Docs", "free", 420),
    ("Orbit Labs", "free", 150),
    ("Kestrel Maps", "enterprise", 60),
]
"""More tenants for the operator's list: name, plan, calls this month."""


@pytest.fixture
def browser(stores: Stores) -> Iterator[Browser]:
    """Started after the stores: Playwright's sync API runs an event loop in this thread, and
    the database fixture's ``asyncio.run`` cannot run inside one."""
    if shutil.which(CHROMIUM) is None:
        unavailable("chromium", FileNotFoundError(CHROMIUM))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _screenshots(tmp_path: Path, stores: Stores) -> Path:
    chosen = os.environ.get("TG_CONSOLE_SCREENSHOTS")
    if chosen and stores.name == "memory":
        return Path(chosen)
    return tmp_path


def _operator_token() -> str:
    """Operator tokens are checked against the wall clock (PyJWT's), not the injected one."""
    now = int(time.time())
    claims = {"sub": "ops@example.com", "role": "operator", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def _sign_in(page: Page, base: str, credential: str) -> None:
    """By keyboard: the field, the credential, Enter."""
    answer = page.goto(base + CONSOLE + "/sign-in")
    assert answer is not None and answer.headers["content-security-policy"] == (
        CONTENT_SECURITY_POLICY
    )
    page.get_by_label("API key").focus()
    page.keyboard.type(credential)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def _register(api: httpx.Client, name: str, email: str, plan: str = "free") -> dict[str, Any]:
    body = {"name": name, "admin_email": email, "plan": plan}
    answer = api.post("/api/v1/tenants/register", json=body)
    assert answer.status_code == 201, answer.text
    tenant: dict[str, Any] = answer.json()
    return tenant


def test_console_in_a_browser(
    stores: Stores, browser: Browser, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    clock = FakeClock(MONTH_START)
    gateway = TenantGateway(echo_app(), admin_jwt_secret=JWT_SECRET, clock=clock, **stores.kwargs())
    shots = _screenshots(tmp_path, stores)
    shots.mkdir(parents=True, exist_ok=True)
    dialogs: list[str] = []
    with serve_in_thread(gateway) as base, httpx.Client(base_url=base, timeout=30) as api:
        tenant = _register(api, "Nimbus Analytics", "ops@nimbus.example")
        hostile = _register(api, XSS, "x@hostile.example")
        by_day = synthetic_month(api, clock, tenant["api_key"])
        headers = {"Authorization": f"Bearer {tenant['api_key']}"}

        context = browser.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()
        page.on("dialog", lambda dialog: _accept(dialog, dialogs))
        _sign_in(page, base, tenant["api_key"])
        assert page.url.endswith(f"{CONSOLE}/tenants/{tenant['id']}")

        # The chart's points are /usage's days, and the progress bar its total.
        usage = api.get(f"/api/v1/tenants/{tenant['id']}/usage", headers=headers).json()
        points = page.locator("#burn-down circle.point")
        shown = {
            points.nth(i).get_attribute("data-date"): int(
                points.nth(i).get_attribute("data-calls") or -1
            )
            for i in range(points.count())
        }
        expected = {day["date"]: day["api_calls"] for day in usage["by_day"]}
        assert shown == expected == by_day
        last = points.nth(points.count() - 1)
        assert int(last.get_attribute("data-remaining") or -1) == usage["remaining"]
        assert int(page.locator("#quota-bar").get_attribute("value") or -1) == usage["api_calls"]
        refused = page.locator("#refused tbody tr").all_inner_texts()
        assert usage["rejected_by_reason"] == {"burst": 5}
        assert [row.split("\t") for row in refused] == [["burst", "5"]]
        assert "runs out on" in page.locator("#projection").inner_text()
        page.screenshot(path=str(shots / "tenant.png"), full_page=True)

        # A key: created (the secret once, and it works), then revoked (and it stops).
        page.get_by_label("Name", exact=True).fill("ci deploy")
        page.locator("#key-role").select_option("developer")
        page.get_by_role("button", name="Create key").click()
        secret = page.locator("#secret").input_value()
        assert secret.startswith("tk_")
        assert api.get("/whoami", headers={"X-API-Key": secret}).status_code == 200
        page.get_by_role("link", name="Done: back to the tenant").click()
        page.get_by_role("button", name="Revoke key ci deploy").click()
        page.wait_for_url("**done=key_revoked**")
        assert dialogs == ["Revoke this key? Calls with it stop at once."]
        assert api.get("/whoami", headers={"X-API-Key": secret}).status_code == 401

        # A user, added; the seats left go down.
        page.get_by_label("Email").fill("dana@nimbus.example")
        page.locator("#user-role").select_option("billing")
        page.get_by_role("button", name="Add user").click()
        page.wait_for_url("**done=user_added**")
        users = api.get(f"/api/v1/tenants/{tenant['id']}/users", headers=headers).json()
        assert {(u["email"], u["role"]) for u in users} == {
            ("ops@nimbus.example", "admin"),
            ("dana@nimbus.example", "billing"),
        }
        assert "3 left" in page.locator("#seats").inner_text()

        # The plan: previewed with its proration, then changed.
        page.get_by_label("New plan").select_option("professional")
        page.get_by_role("button", name="Preview the change").click()
        before = page.locator("#preview-before .total").inner_text()
        after = page.locator("#preview-after .total").inner_text()
        assert (
            before == "0.00"
            and after != "0.00"
            and "prorated" in page.locator("#preview-after").inner_text()
        )
        page.screenshot(path=str(shots / "plan-preview.png"), full_page=True)
        page.get_by_role("button", name="Change to professional").click()
        page.wait_for_url("**done=plan_changed**")
        changed = api.get(f"/api/v1/tenants/{tenant['id']}", headers=headers).json()
        assert changed["plan"] == "professional"
        invoice = api.get(f"/api/v1/tenants/{tenant['id']}/billing/invoice", headers=headers).json()
        assert f"{invoice['total_cents'] / 100:,.2f}" == after

        # The invoice, as it prints.
        page.goto(f"{base}{CONSOLE}/tenants/{tenant['id']}/invoices/{MONTH_START:%Y-%m}")
        assert page.locator("#invoice-total").inner_text() == after
        page.emulate_media(media="print")
        assert not page.locator("header.top").is_visible()
        page.screenshot(path=str(shots / "invoice-print.png"), full_page=True)
        page.emulate_media(media="screen")

        # Phone width: nothing wider than the screen but the tables' own scrolling boxes.
        phone = browser.new_context(viewport={"width": 390, "height": 844})
        mobile = phone.new_page()
        _sign_in(mobile, base, tenant["api_key"])
        width = mobile.evaluate("document.scrollingElement.scrollWidth")
        wide = mobile.evaluate(_WIDEST)
        assert width <= 390, (width, wide)
        mobile.screenshot(path=str(shots / "tenant-phone.png"))
        phone.close()
        context.close()

        # The operator: every tenant, closest to its quota first; the hostile name is text.
        operator = browser.new_context(viewport={"width": 1100, "height": 700})
        page = operator.new_page()
        page.on("dialog", lambda dialog: _accept(dialog, dialogs))
        _sign_in(page, base, _operator_token())
        assert page.url.endswith(f"{CONSOLE}/tenants")
        page.get_by_label("Search name, id or email").fill("nimbus.example")
        page.get_by_role("button", name="Search").click()
        rows = page.locator("#tenant-table tbody tr")
        assert rows.count() == 1 and "Nimbus Analytics" in rows.first.inner_text()
        page.get_by_label("Search name, id or email").fill("hostile.example")
        page.get_by_role("button", name="Search").click()
        assert page.locator("#tenant-table tbody tr").first.inner_text().startswith(XSS)
        page.get_by_role("button", name=f"Suspend {XSS}").click()
        page.wait_for_url("**done=suspended**")
        assert api.get("/whoami", headers={"X-API-Key": hostile["api_key"]}).status_code == 403
        page.goto(f"{base}{CONSOLE}/tenants?q=hostile.example")
        page.get_by_role("button", name=f"Resume {XSS}").click()
        page.wait_for_url("**done=resumed**")
        assert api.get("/whoami", headers={"X-API-Key": hostile["api_key"]}).status_code == 200
        page.get_by_role("link", name=XSS).click()
        assert page.locator("#tenant-name").inner_text() == XSS
        assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
        if stores.name == "memory":  # a fresh directory: these are all its tenants
            for name, plan, calls in _OTHERS:
                other = _register(api, name, f"admin@{name.split()[0].lower()}.example", plan)
                for _ in range(calls):
                    clock.advance(0.2)  # under the burst limit
                    api.get("/whoami", headers={"X-API-Key": other["api_key"]})
            page.goto(f"{base}{CONSOLE}/tenants")
            names = page.locator("#tenant-table tbody tr td:first-child a").all_inner_texts()
            assert names == ["Quill Docs", "Orbit Labs", "Nimbus Analytics", XSS, "Kestrel Maps"]
            page.screenshot(path=str(shots / "operators.png"), full_page=True)
        operator.close()
    assert dialogs == ["Revoke this key? Calls with it stop at once."], dialogs  # no alert(1)


def _accept(dialog: Dialog, seen: list[str]) -> None:
    seen.append(dialog.message)
    dialog.accept()
