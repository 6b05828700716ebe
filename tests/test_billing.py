"""Billing (issue 6): hand-computed scenarios, issued invoices that never change, closing."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tenant_gateway import TenantGateway, load_plans
from tenant_gateway.billing import build_invoice, calls_at, change_field, round_half_up
from tenant_gateway.clock import Period
from tenant_gateway.invoices import InvoiceStore, MemoryInvoices
from tenant_gateway.models import PlanChange, Tenant, TenantStatus
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.invoices import PostgresInvoices

from .apps import echo_app
from .conftest import (
    JWT_SECRET,
    REDIS_URL,
    ClientFor,
    FakeClock,
    Stores,
    auth,
    operator_headers,
    register,
)
from .helpers import assert_problem, gateway_via, proxy_to

T = "/api/v1/tenants"
PLANS = load_plans(
    {
        "plans": {
            "free": {
                "max_users": 5,
                "monthly_calls": 1000,
                "burst_per_second": None,
                "price_cents": 0,
            },
            "professional": {
                "max_users": 50,
                "monthly_calls": 100_000,
                "burst_per_second": None,
                "price_cents": 4900,
            },
            "enterprise": {
                "max_users": None,
                "monthly_calls": None,
                "burst_per_second": None,
                "price_cents": 49900,
            },
            "metered": {
                "max_users": None,
                "monthly_calls": 1000,
                "burst_per_second": None,
                "price_cents": 1000,
                "overage_cents_per_1000": 200,
            },
            "team": {
                "max_users": None,
                "monthly_calls": None,
                "burst_per_second": None,
                "price_cents": 1000,
                "included_seats": 3,
                "seat_price_cents": 500,
            },
            "tiny": {
                "max_users": None,
                "monthly_calls": None,
                "burst_per_second": None,
                "price_cents": 3,
            },
            "metered-plus": {
                "max_users": None,
                "monthly_calls": 10_000,
                "burst_per_second": None,
                "price_cents": 5000,
                "overage_cents_per_1000": 100,
            },
        }
    }
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def tenant(plan: str, created: str) -> Tenant:
    return Tenant("tenant_x", "X", plan, TenantStatus.ACTIVE, None, "a@x.io", at(created))


# (case, period, created, plan history [(plan, from)], api_calls, users, expected line amounts)
SCENARIOS: list[tuple[str, str, str, list[tuple[str, str]], int, int, list[int]]] = [
    ("full month free", "2026-11", "2026-10-01", [("free", "2026-10-01")], 10, 1, [0]),
    (
        "full month professional",
        "2026-11",
        "2026-10-01",
        [("professional", "2026-10-01")],
        10,
        1,
        [4900],
    ),
    (
        "full month enterprise",
        "2026-11",
        "2026-10-01",
        [("enterprise", "2026-10-01")],
        10,
        1,
        [49900],
    ),
    # 15 of 30 days: 4900 * 15/30 = 2450
    ("registered Nov 16", "2026-11", "2026-11-16", [("professional", "2026-11-16")], 0, 1, [2450]),
    # free 9 days, professional 10 days (4900 * 10/30 = 1633.33 → 1633), free 11 days
    (
        "upgrade day 10, downgrade day 20",
        "2026-11",
        "2026-11-01",
        [("free", "2026-11-01"), ("professional", "2026-11-10"), ("free", "2026-11-20")],
        0,
        1,
        [0, 1633, 0],
    ),
    # professional 9/30 (1470) then enterprise 21/30 (49900 * 21/30 = 34930)
    (
        "professional to enterprise day 10",
        "2026-11",
        "2026-10-15",
        [("professional", "2026-10-15"), ("enterprise", "2026-11-10")],
        0,
        1,
        [1470, 34930],
    ),
    # 1 call over 1,000 → 1 started thousand at 200
    ("overage of 1", "2026-11", "2026-10-01", [("metered", "2026-10-01")], 1001, 1, [1000, 200]),
    # 1,001 over → 2 started thousands
    (
        "overage of 1,001",
        "2026-11",
        "2026-10-01",
        [("metered", "2026-10-01")],
        2001,
        1,
        [1000, 400],
    ),
    ("exactly the quota", "2026-11", "2026-10-01", [("metered", "2026-10-01")], 1000, 1, [1000]),
    # 28-day February, from the 15th: 14/28 → 2450
    (
        "February 2026 (28 days)",
        "2026-02",
        "2026-02-15",
        [("professional", "2026-02-15")],
        0,
        1,
        [2450],
    ),
    # 30-day April, from the 15th: 16/30 → 2613.33 → 2613
    ("April (30 days)", "2026-04", "2026-04-15", [("professional", "2026-04-15")], 0, 1, [2613]),
    # 31-day January, from the 15th: 17/31 → 2687.10 → 2687
    ("January (31 days)", "2026-01", "2026-01-15", [("professional", "2026-01-15")], 0, 1, [2687]),
    # leap February 2028 (29 days), from the 15th: 15/29 → 2534.48 → 2534
    ("leap February 2028", "2028-02", "2028-02-15", [("professional", "2028-02-15")], 0, 1, [2534]),
    # half a month of 3 cents is 1.5 → 2 (half-up)
    ("half-up rounding", "2026-11", "2026-11-16", [("tiny", "2026-11-16")], 0, 1, [2]),
    # 5 users, 3 included, 500 each beyond
    ("extra seats", "2026-11", "2026-10-01", [("team", "2026-10-01")], 0, 5, [1000, 1000]),
]


@pytest.mark.parametrize(
    ("period", "created", "history", "calls", "users", "amounts"),
    [case[1:] for case in SCENARIOS],
    ids=[case[0] for case in SCENARIOS],
)
def test_scenarios_computed_by_hand(
    period: str,
    created: str,
    history: list[tuple[str, str]],
    calls: int,
    users: int,
    amounts: list[int],
) -> None:
    invoice = build_invoice(
        tenant=tenant(history[-1][0], created),
        period=Period.parse(period),
        history=[PlanChange(plan, at(since)) for plan, since in history],
        tallies={"calls": calls},
        users=users,
        plans=PLANS,
        status="issued",
    )
    lines: Any = invoice["lines"]
    assert [line["amount_cents"] for line in lines] == amounts
    assert invoice["total_cents"] == sum(amounts)
    assert invoice["currency"] == "USD"
    for line in lines:
        assert isinstance(line["amount_cents"], int) and isinstance(line["unit_amount_cents"], int)
        if "proration" not in line:
            assert line["amount_cents"] == line["quantity"] * line["unit_amount_cents"]
    json.dumps(invoice)  # no float, no Fraction: plain JSON


# Overage on each plan's own terms (November 2026: 30 days). The month's n-th call, made on
# plan P, is overage when n exceeds P's monthly quota (metered 1,000 at 200 per started
# thousand, metered-plus 10,000 at 100); each plan's price is prorated by time. (case, created,
# history [(plan, from)], calls before each change (the count stored with it), calls in the
# month, expected line amounts)
OVERAGE: list[tuple[str, str, list[tuple[str, str]], list[int], int, list[int]]] = [
    # The finding: 1,100 calls on metered, then free for the last day. metered 29/30 of 1,000
    # cents = 966.67 → 967; calls 1,001-1,100 were made on metered: 100 over → 200. (Billed on
    # the plan in force at the end, it was 0.)
    (
        "switch to a plan without overage",
        "2026-10-01",
        [("metered", "2026-10-01"), ("free", "2026-11-30")],
        [1100],
        1100,
        [967, 0, 200],
    ),
    # Upgrade on day 11 after 1,500 calls: metered 10/30 (333.33 → 333), calls 1,001-1,500 over
    # → 200; metered-plus 20/30 (3,333.33 → 3333), calls 1,501-12,000: 10,001-12,000 over its
    # 10,000 → 2 × 100. The calls already over metered's quota stay metered's.
    (
        "upgrade",
        "2026-10-01",
        [("metered", "2026-10-01"), ("metered-plus", "2026-11-11")],
        [1500],
        12000,
        [333, 3333, 200, 200],
    ),
    # Downgrade on day 16: metered-plus 15/30 (2500), calls 1-4,000: none over; metered 15/30
    # (500), calls 4,001-6,100 are all past its 1,000: 2,100 over → 3 × 200.
    (
        "downgrade",
        "2026-10-01",
        [("metered-plus", "2026-10-01"), ("metered", "2026-11-16")],
        [4000],
        6100,
        [2500, 500, 600],
    ),
    # metered days 1-10 (calls 1-700), free days 11-20 (701-900), metered again days 21-30
    # (901-1,500): metered 2 × 333; its calls past 1,000: 500 → 200 (one line per plan).
    (
        "switch away and back",
        "2026-10-01",
        [("metered", "2026-10-01"), ("free", "2026-11-11"), ("metered", "2026-11-21")],
        [700, 900],
        1500,
        [333, 0, 333, 200],
    ),
    # From free (no overage rate) to metered on day 16 after 900 calls: metered 15/30 (500),
    # calls 901-1,300: 1,001-1,300 are over → 200. free's calls count toward the month's
    # number, as the quota decision counts them, but are never billed as overage.
    (
        "upgrade from a plan without overage",
        "2026-10-01",
        [("free", "2026-10-01"), ("metered", "2026-11-16")],
        [900],
        1300,
        [0, 500, 200],
    ),
    # Registered on day 16: half the price, the whole quota (what the quota decision and the
    # RateLimit header allow): 600 calls, none over.
    ("registered mid-month", "2026-11-16", [("metered", "2026-11-16")], [], 600, [500]),
    # ... and 1,300 calls: 300 over → 200.
    ("registered mid-month, over", "2026-11-16", [("metered", "2026-11-16")], [], 1300, [500, 200]),
]


@pytest.mark.parametrize("kept", ["with the change", "legacy usage field"])
@pytest.mark.parametrize(
    ("created", "history", "snapshots", "calls", "amounts"),
    [case[1:] for case in OVERAGE],
    ids=[case[0] for case in OVERAGE],
)
def test_overage_on_each_plans_terms(
    created: str,
    history: list[tuple[str, str]],
    snapshots: list[int],
    calls: int,
    amounts: list[int],
    kept: str,
) -> None:
    """Each case twice: the count stored with each change (plan history), and a change stored
    before migration 0008 (no count) whose snapshot an earlier version kept in the usage hash
    (``calls@<µs>``, still in the ledgers it wrote): the same cents either way."""
    counts = [None, *snapshots]  # the registration row carries none
    stored = kept == "with the change"
    changes = [
        PlanChange(plan, at(since), before if stored else None)
        for (plan, since), before in zip(history, counts, strict=True)
    ]
    tallies = {"calls": calls}
    if not stored:
        tallies |= {
            change_field(change.at): before
            for change, before in zip(changes[1:], snapshots, strict=True)
        }
    invoice = build_invoice(
        tenant=tenant(history[-1][0], created),
        period=Period(2026, 11),
        history=changes,
        tallies=tallies,
        users=1,
        plans=PLANS,
        status="draft",
    )
    lines: Any = invoice["lines"]
    assert [line["amount_cents"] for line in lines] == amounts
    assert invoice["total_cents"] == sum(amounts) and invoice["api_calls"] == calls


def test_a_change_without_a_snapshot_is_estimated_from_the_days() -> None:
    """A change stored before snapshots existed, at noon on day 30: days 1-29 (1,000 calls)
    and half of day 30's 100 are metered's: 1,050. metered 29.5/30: 983.33 → 983 cents; 50
    calls over its 1,000 → 200."""
    tallies = {"calls": 1100, "day:01": 1000, "day:30": 110, "refday:30": 10}
    moment = at("2026-11-30T12:00:00")
    assert calls_at(moment, tallies, Period(2026, 11)) == 1050
    invoice = build_invoice(
        tenant=tenant("free", "2026-10-01"),
        period=Period(2026, 11),
        history=[PlanChange("metered", at("2026-10-01")), PlanChange("free", moment)],
        tallies=tallies,
        users=1,
        plans=PLANS,
        status="draft",
    )
    lines: Any = invoice["lines"]
    assert [line["amount_cents"] for line in lines] == [983, 0, 200]


def test_the_count_stored_with_a_change_wins_over_the_usage_hash() -> None:
    """The attack the stored count stops: 1,100 calls on metered in the first second of day
    20, a change to free 5 s later. From the day's tallies the change would have 1,100 × 6 ÷
    86,400 → 0 calls before it, moving all 1,100 (and the overage) to free; a ``calls@``
    field in the usage hash (tenant-influenced state) says whatever it says. The count stored
    with the change decides: metered 1,641,606 of 2,592,000 s of 1,000 cents = 633.34 → 633;
    calls 1,001-1,100 over its quota → 200."""
    moment = at("2026-11-20T00:00:06")
    november = Period(2026, 11)
    tallies = {"calls": 1100, "day:20": 1100}
    assert calls_at(moment, tallies, november) == 0  # the estimate, gamed
    assert calls_at(moment, tallies | {change_field(moment): 3}, november) == 3  # legacy field
    assert calls_at(moment, tallies | {change_field(moment): 3}, november, 1100) == 1100
    invoice = build_invoice(
        tenant=tenant("free", "2026-10-01"),
        period=november,
        history=[PlanChange("metered", at("2026-10-01")), PlanChange("free", moment, 1100)],
        tallies=tallies | {change_field(moment): 3},
        users=1,
        plans=PLANS,
        status="draft",
    )
    lines: Any = invoice["lines"]
    assert [line["amount_cents"] for line in lines] == [633, 0, 200]
    assert lines[2]["plan"] == "metered" and lines[2]["overage_calls"] == 100


def test_round_half_up() -> None:
    assert [round_half_up(Fraction(n, 2)) for n in (1, 3, 5, -1)] == [1, 2, 3, 0]
    assert round_half_up(Fraction(2, 3)) == 1 and round_half_up(Fraction(1, 3)) == 0


# -- over the API -------------------------------------------------------------------------------


def gateway(stores: Stores, clock: FakeClock, **options: Any) -> TenantGateway:
    plans = {"plans": {name: _raw(plan) for name, plan in PLANS.items()}}
    return TenantGateway(
        echo_app(),
        admin_jwt_secret=JWT_SECRET,
        plans=plans,
        clock=clock,
        **stores.kwargs(),
        **options,
    )


def _raw(plan: Any) -> dict[str, Any]:
    return {
        "max_users": plan.max_users,
        "monthly_calls": plan.monthly_calls,
        "burst_per_second": plan.burst_per_second,
        "price_cents": plan.price_cents,
        "overage_cents_per_1000": plan.overage_cents_per_1000,
        "included_seats": plan.included_seats,
        "seat_price_cents": plan.seat_price_cents,
    }


async def test_a_month_with_plan_changes_then_an_immutable_invoice(
    stores: Stores, client_for: ClientFor
) -> None:
    clock = FakeClock(at("2026-11-01T00:00:00"))
    client = await client_for(gateway(stores, clock))
    tenant = await register(client, plan="free")
    url = f"{T}/{tenant['id']}"
    clock.set(at("2026-11-10T00:00:00"))
    assert (
        await client.put(f"{url}/plan", json={"plan": "professional"}, headers=auth(tenant))
    ).status_code == 200
    clock.set(at("2026-11-20T00:00:00"))
    assert (
        await client.put(f"{url}/plan", json={"plan": "free"}, headers=auth(tenant))
    ).status_code == 200
    same = await client.put(f"{url}/plan", json={"plan": "free"}, headers=auth(tenant))
    assert same.status_code == 200  # a no-op: no new segment
    for _ in range(3):
        await client.get("/whoami", headers=auth(tenant))
    draft = (await client.get(f"{url}/billing/invoice", headers=auth(tenant))).json()
    assert draft["status"] == "draft" and draft["number"] is None
    assert [line["amount_cents"] for line in draft["lines"]] == [0, 1633, 0]
    assert draft["total_cents"] == 1633 and draft["api_calls"] == 3

    clock.set(at("2026-12-01T00:00:30"))  # ended, but within the closing grace: still a draft
    assert (
        await client.get(
            f"{url}/billing/invoice", params={"period": "2026-11"}, headers=auth(tenant)
        )
    ).json()["status"] == "draft"
    clock.set(at("2026-12-01T00:05:00"))
    first = await client.get(
        f"{url}/billing/invoice", params={"period": "2026-11"}, headers=auth(tenant)
    )
    issued = first.json()
    assert issued["status"] == "issued" and issued["number"].startswith("INV-")
    assert issued["total_cents"] == 1633 and issued["issued_at"] == "2026-12-01T00:05:00Z"
    # change everything the invoice was computed from: it must not move by one byte
    await client.put(f"{url}/plan", json={"plan": "enterprise"}, headers=auth(tenant))
    await client.post(f"{url}/users", json={"email": "late@x.io"}, headers=auth(tenant))
    clock.set(at("2026-11-30T23:00:00"))  # even a call counted late into November
    await client.get("/whoami", headers=auth(tenant))
    clock.set(at("2026-12-02T00:00:00"))
    again = await client.get(
        f"{url}/billing/invoice", params={"period": "2026-11"}, headers=auth(tenant)
    )
    assert again.content == first.content
    listed = (await client.get(f"{url}/billing/invoices", headers=auth(tenant))).json()
    assert [i["number"] for i in listed] == [issued["number"]]


async def test_overage_is_admitted_and_billed(stores: Stores, client_for: ClientFor) -> None:
    clock = FakeClock(at("2026-11-01T00:00:00"))
    gw = gateway(stores, clock)
    client = await client_for(gw)
    tenant = await register(client, plan="metered")
    statuses = await asyncio.gather(
        *(client.get("/whoami", headers=auth(tenant)) for _ in range(1002))
    )
    assert {r.status_code for r in statuses} == {200}
    at_zero = [r for r in statuses if r.headers["ratelimit"].startswith('"monthly";r=0;')]
    assert len(at_zero) == 3  # the 1,000th call, and the two beyond the quota
    invoice = (await client.get(f"{T}/{tenant['id']}/billing/invoice", headers=auth(tenant))).json()
    assert [line["amount_cents"] for line in invoice["lines"]] == [1000, 200]


async def test_overage_stays_on_the_plan_it_was_made_on(
    stores: Stores, client_for: ClientFor
) -> None:
    """The finding, over the API: 1,100 calls on metered, then free for the last day. The
    overage is still billed (metered 29/30: 967 cents, quota 967, 133 over → 200), in the
    draft, after Redis lost its counters (real stores), and on the issued invoice."""
    clock = FakeClock(at("2026-11-01T00:00:00"))
    gw = gateway(stores, clock)
    client = await client_for(gw)
    tenant = await register(client, plan="metered")
    url = f"{T}/{tenant['id']}"
    statuses = await asyncio.gather(
        *(client.get("/whoami", headers=auth(tenant)) for _ in range(1100))
    )
    assert {r.status_code for r in statuses} == {200}
    clock.set(at("2026-11-30T00:00:00"))
    changed = await client.put(f"{url}/plan", json={"plan": "free"}, headers=auth(tenant))
    assert changed.status_code == 200
    draft = (await client.get(f"{url}/billing/invoice", headers=auth(tenant))).json()
    assert [line["amount_cents"] for line in draft["lines"]] == [967, 0, 200]
    await gw.flush()
    if stores.name == "real":  # the snapshot is in the ledger, not only in Redis
        raw = aioredis.Redis.from_url(stores.redis_url or "")
        assert await raw.delete(f"{stores.redis_key_prefix}usage:{{{tenant['id']}}}:2026-11")
        await raw.aclose()
    clock.set(at("2026-12-01T00:05:00"))
    issued = (
        await client.get(
            f"{url}/billing/invoice", params={"period": "2026-11"}, headers=auth(tenant)
        )
    ).json()
    assert issued["status"] == "issued"
    assert [line["amount_cents"] for line in issued["lines"]] == [967, 0, 200]
    assert issued["lines"][2]["plan"] == "metered" and issued["lines"][2]["calls"] == 1100


async def calls(client: Any, tenant: dict[str, Any], count: int) -> None:
    statuses = await asyncio.gather(
        *(client.get("/whoami", headers=auth(tenant)) for _ in range(count))
    )
    assert {r.status_code for r in statuses} == {200}


async def change_plan(client: Any, tenant: dict[str, Any], plan: str) -> None:
    answer = await client.put(f"{T}/{tenant['id']}/plan", json={"plan": plan}, headers=auth(tenant))
    assert answer.status_code == 200, answer.text
    assert answer.json()["plan"] == plan


async def test_the_calls_before_a_change_are_stored_with_it(
    stores: Stores, client_for: ClientFor
) -> None:
    """The plan history holds, in each change's row, the month's calls made before it; the
    registration's row holds none, and a change to the same plan stores no row."""
    clock = FakeClock(at("2026-11-01T00:00:00"))
    gw = gateway(stores, clock)
    client = await client_for(gw)
    tenant = await register(client, plan="free")
    await calls(client, tenant, 7)
    clock.set(at("2026-11-05T00:00:00"))
    await change_plan(client, tenant, "professional")
    await calls(client, tenant, 3)
    clock.set(at("2026-11-06T12:00:00"))
    await change_plan(client, tenant, "free")
    await change_plan(client, tenant, "free")  # a no-op
    assert await gw.services.directory.plan_history(tenant["id"]) == [
        PlanChange("free", at("2026-11-01T00:00:00"), None),
        PlanChange("professional", at("2026-11-05T00:00:00"), 7),
        PlanChange("free", at("2026-11-06T12:00:00"), 10),
    ]


async def test_no_snapshot_field_in_the_usage_hash(stores: Stores, client_for: ClientFor) -> None:
    """A plan change writes nothing into the tenant's usage: not in the counters, not in the
    ledger, not in the Redis hash itself; flipping plans cannot grow them."""
    clock = FakeClock(at("2026-11-01T00:00:00"))
    gw = gateway(stores, clock)
    client = await client_for(gw)
    tenant = await register(client, plan="metered")
    await calls(client, tenant, 5)
    key = (tenant["id"], "2026-11")
    await gw.flush()  # the route tallies batched in process, too
    before = set(await gw.services.counters.read(key))
    for plan in ("free", "metered", "professional", "metered"):
        clock.advance(60)
        await change_plan(client, tenant, plan)
    await gw.flush()
    assert set(await gw.services.counters.read(key)) == before
    ledger = await gw.services.ledger.read(key)
    assert ledger["calls"] == 5 and not [field for field in ledger if "@" in field]
    if stores.name == "real":
        raw = aioredis.Redis.from_url(stores.redis_url or "")
        fields = await raw.hkeys(f"{stores.redis_key_prefix}usage:{{{tenant['id']}}}:2026-11")
        await raw.aclose()
        assert fields and not [field for field in fields if b"@" in field]


async def test_losing_the_usage_hash_cannot_move_overage_to_the_new_plan(
    stores: Stores, client_for: ClientFor
) -> None:
    """The attack: on metered (1,000 calls, 200 cents per started 1,000 beyond), 1,100 calls
    in the first second of day 20, then a change to free 5 s later; then the live usage hash
    is lost (counters dropped before any flush could carry a snapshot to the ledger: a
    process dying, a hash set aside), so the ledger is the only usage left. The per-day
    estimate would put 1,100 × 6 ÷ 86,400 → 0 calls on metered and bill no overage. Billed
    by hand: metered 1 Nov 00:00:00 to 20 Nov 00:00:06, 1,641,606 of 2,592,000 s of 1,000
    cents = 633.34 → 633; free 0; calls 1,001-1,100 were made on metered: 100 over → 200."""
    clock = FakeClock(at("2026-11-01T00:00:00"))
    gw = gateway(stores, clock, usage_flush_interval=3600.0)  # only the test flushes
    client = await client_for(gw)
    tenant = await register(client, plan="metered")
    url = f"{T}/{tenant['id']}"
    clock.set(at("2026-11-20T00:00:01"))
    await calls(client, tenant, 1100)
    await gw.flush()  # the calls reach the ledger
    clock.set(at("2026-11-20T00:00:06"))
    await change_plan(client, tenant, "free")
    await gw.services.counters.forget([(tenant["id"], "2026-11")])
    expected = [633, 0, 200]
    draft = (await client.get(f"{url}/billing/invoice", headers=auth(tenant))).json()
    assert [line["amount_cents"] for line in draft["lines"]] == expected
    assert draft["total_cents"] == 833 and draft["api_calls"] == 1100
    assert draft["lines"][2]["plan"] == "metered" and draft["lines"][2]["overage_calls"] == 100
    clock.set(at("2026-12-01T00:05:00"))
    issued = (
        await client.get(
            f"{url}/billing/invoice", params={"period": "2026-11"}, headers=auth(tenant)
        )
    ).json()
    assert issued["status"] == "issued"
    assert [line["amount_cents"] for line in issued["lines"]] == expected


async def test_a_change_stored_before_the_count_reads_the_legacy_snapshot(
    postgres_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """A ledger and plan history as an earlier version left them: the change's row without a
    count (``calls_before`` NULL, as migration 0008 leaves older rows), its snapshot in the
    usage ledger as a ``calls@<µs>`` field. The invoice reads that field (the same cents as
    the attack test above, 633 + 0 + 200); without it, the per-day estimate."""
    clock = FakeClock(at("2026-11-01T00:00:00"))
    gw = gateway(Stores("real", postgres_url, REDIS_URL, redis_prefix), clock)
    client = await client_for(gw)
    tenant, moment = await register(client, plan="metered"), at("2026-11-20T00:00:06")
    url = f"{T}/{tenant['id']}/billing/invoice"
    clock.set(at("2026-11-20T00:00:01"))
    await calls(client, tenant, 1100)
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():
            await conn.execute("UPDATE tg_tenants SET plan = 'free' WHERE id = $1", tenant["id"])
            await conn.execute(
                "INSERT INTO tg_plan_changes (tenant_id, from_plan, to_plan, changed_at)"
                " VALUES ($1, 'metered', 'free', $2)",
                tenant["id"],
                moment,
            )
    finally:
        await conn.close()
    history = await gw.services.directory.plan_history(tenant["id"])
    assert [(change.plan, change.calls_before) for change in history] == [
        ("metered", None),
        ("free", None),
    ]
    estimated = (await client.get(url, headers=auth(tenant))).json()
    assert [line["amount_cents"] for line in estimated["lines"]] == [633, 0]  # 1,100 × 6 ÷ 86,400
    await gw.services.ledger.write({(tenant["id"], "2026-11"): {change_field(moment): 1100}})
    draft = (await client.get(url, headers=auth(tenant))).json()
    assert [line["amount_cents"] for line in draft["lines"]] == [633, 0, 200]


async def test_switching_away_and_back(stores: Stores, client_for: ClientFor) -> None:
    """metered days 1-10 (calls 1-700), free days 11-20 (701-900), metered days 21-30
    (901-1,200): 2 × 333 cents for metered's time; of its calls, 1,001-1,200 passed its quota →
    one started thousand, 200."""
    clock = FakeClock(at("2026-11-01T00:00:00"))
    client = await client_for(gateway(stores, clock))
    tenant = await register(client, plan="metered")
    url = f"{T}/{tenant['id']}"
    for plan, day, calls in (("metered", None, 700), ("free", 11, 200), ("metered", 21, 300)):
        if day is not None:
            clock.set(at(f"2026-11-{day}T00:00:00"))
            answer = await client.put(f"{url}/plan", json={"plan": plan}, headers=auth(tenant))
            assert answer.status_code == 200
        statuses = await asyncio.gather(
            *(client.get("/whoami", headers=auth(tenant)) for _ in range(calls))
        )
        assert {r.status_code for r in statuses} == {200}
    draft = (await client.get(f"{url}/billing/invoice", headers=auth(tenant))).json()
    assert [line["amount_cents"] for line in draft["lines"]] == [333, 0, 333, 200]
    assert draft["api_calls"] == 1200
    assert draft["lines"][3]["calls"] == 1000 and draft["lines"][3]["overage_calls"] == 200


async def test_no_plan_change_without_its_snapshot(
    redis_url: str, redis_prefix: str, client_for: ClientFor
) -> None:
    """With the counter store unreachable the change cannot snapshot the calls made so far:
    it answers 503 and the plan stays as it was."""
    clock = FakeClock(at("2026-11-01T00:00:00"))
    plans = {"plans": {name: _raw(plan) for name, plan in PLANS.items()}}
    proxy = await proxy_to(redis_url)
    try:
        gw = gateway_via(redis_url, proxy, redis_prefix, plans=plans, clock=clock)
        client = await client_for(gw)
        tenant = await register(client, plan="metered")
        proxy.blackhole = True
        proxy.cut()
        url = f"{T}/{tenant['id']}"
        answer = await client.put(f"{url}/plan", json={"plan": "free"}, headers=auth(tenant))
        assert_problem(answer, 503, "service_unavailable")
        assert (await client.get(url, headers=auth(tenant))).json()["plan"] == "metered"
    finally:
        await proxy.stop()


async def test_invoice_bad_input(stores: Stores, client_for: ClientFor) -> None:
    clock = FakeClock(at("2026-11-15T00:00:00"))
    client = await client_for(gateway(stores, clock))
    tenant = await register(client, plan="free")
    url = f"{T}/{tenant['id']}/billing/invoice"
    for bad in ("2026-13", "2026/11", "x", "2026-12"):
        assert_problem(
            await client.get(url, params={"period": bad}, headers=auth(tenant)),
            422,
            "validation_error",
        )
    assert_problem(
        await client.get(url, params={"period": "2026-10"}, headers=auth(tenant)), 404, "not_found"
    )
    developer = (
        await client.post(
            f"{T}/{tenant['id']}/keys", json={"role": "developer"}, headers=auth(tenant)
        )
    ).json()
    assert_problem(await client.get(url, headers=auth(developer)), 403, "forbidden")
    billing = (
        await client.post(
            f"{T}/{tenant['id']}/keys", json={"role": "billing"}, headers=auth(tenant)
        )
    ).json()
    assert (await client.get(url, headers=auth(billing))).status_code == 200
    assert (await client.get(url, headers=operator_headers())).status_code == 200


async def test_closing_twice_issues_once(stores: Stores, client_for: ClientFor) -> None:
    clock = FakeClock(at("2026-10-20T00:00:00"))
    gw = gateway(stores, clock)
    client = await client_for(gw)
    tenants = [await register(client, plan="professional") for _ in range(3)]
    clock.set(at("2026-11-03T00:00:00"))
    october = Period(2026, 10)
    issued = await asyncio.gather(
        gw.services.billing.close_period(october), gw.services.billing.close_period(october)
    )
    # Two closers at once (as two workers would): each invoice is issued exactly once, by
    # whichever closer reaches its tenant first (how they split the three is timing).
    assert sum(issued) == 3
    numbers = []
    for t in tenants:
        document = (await client.get(f"{T}/{t['id']}/billing/invoices", headers=auth(t))).json()
        assert len(document) == 1 and document[0]["status"] == "issued"
        numbers.append(document[0]["number"])
    assert len(set(numbers)) == 3
    assert await gw.services.billing.close_period(october) == 0


async def test_two_processes_close_the_same_period(
    postgres_url: str, client_for: ClientFor
) -> None:
    """Two `tenant-gateway billing close` processes at once: one invoice, one number."""
    clock = FakeClock(at("2026-09-10T00:00:00"))
    gw = TenantGateway(echo_app(), database_url=postgres_url, clock=clock)
    client = await client_for(gw)
    tenant = await register(client, plan="professional")
    command = [
        sys.executable,
        "-m",
        "tenant_gateway.cli",
        "billing",
        "close",
        "--period",
        "2026-09",
    ]
    command += ["--database-url", postgres_url]
    processes = [
        await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [(await p.communicate())[0].decode() for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    clock.set(at("2026-10-02T00:00:00"))
    invoices = (
        await client.get(f"{T}/{tenant['id']}/billing/invoices", headers=auth(tenant))
    ).json()
    assert len(invoices) == 1 and invoices[0]["period"] == "2026-09"
    assert invoices[0]["total_cents"] == 4900 * 21 // 30  # 10 Sept to the end: 21 of 30 days


@pytest.fixture(params=["memory", "postgres"])
def closers_database(request: pytest.FixtureRequest) -> str | None:
    """None for the memory store, else the test database (a sync fixture: the session's
    database fixture cannot start inside a running event loop)."""
    return None if request.param == "memory" else request.getfixturevalue("postgres_url")


@pytest.fixture
async def two_closers(
    closers_database: str | None,
) -> AsyncIterator[tuple[InvoiceStore, InvoiceStore]]:
    """Two handles on one invoice store, as two closers see it: on PostgreSQL two pools (two
    processes' worth of sessions), in memory one store (closers in one process)."""
    if closers_database is None:
        store = MemoryInvoices()
        yield store, store
        return
    databases = [Database(closers_database), Database(closers_database)]
    for database in databases:
        await database.connect()
    try:
        yield PostgresInvoices(databases[0]), PostgresInvoices(databases[1])
    finally:
        for database in databases:
            await database.close()


async def test_one_closer_at_a_time_holds_a_period(
    two_closers: tuple[InvoiceStore, InvoiceStore],
) -> None:
    first, second = two_closers
    async with first.closing("2026-10") as held:
        assert held
        async with second.closing("2026-10") as also_held:
            assert not also_held
        async with second.closing("2026-09") as other_period:
            assert other_period  # periods do not block each other
    async with second.closing("2026-10") as held_after:
        assert held_after
    with pytest.raises(RuntimeError):  # a close that fails lets go of the period too
        async with first.closing("2026-08") as held:
            assert held
            raise RuntimeError("the close failed")
    async with second.closing("2026-08") as held_after_failure:
        assert held_after_failure


async def test_a_worker_leaves_the_close_to_the_one_already_closing(
    postgres_url: str, client_for: ClientFor
) -> None:
    """N workers at the turn of the month: one closes, the others skip and look again."""
    clock = FakeClock(at("2026-10-20T00:00:00"))
    # A flush interval of an hour keeps the gateway's own closing loop (every max(interval,
    # 10 s)) from closing October while the test does.
    gw = TenantGateway(
        echo_app(), database_url=postgres_url, clock=clock, usage_flush_interval=3600.0
    )
    client = await client_for(gw)
    tenants = [await register(client, plan="professional") for _ in range(2)]
    clock.set(at("2026-11-01T00:05:00"))
    other_worker = Database(postgres_url)
    await other_worker.connect()
    try:
        async with PostgresInvoices(other_worker).closing("2026-10") as held:
            assert held
            assert await gw.services.billing.close_due() is None
            for tenant in tenants:
                url = f"{T}/{tenant['id']}/billing/invoices"
                assert (await client.get(url, headers=auth(tenant))).json() == []
    finally:
        await other_worker.close()
    issued = await gw.services.billing.close_due()
    # Tenants of other tests share this database, so the count covers theirs too.
    assert issued is not None and issued >= len(tenants)
    for tenant in tenants:
        url = f"{T}/{tenant['id']}/billing/invoices"
        (october,) = (await client.get(url, headers=auth(tenant))).json()
        assert october["period"] == "2026-10" and october["status"] == "issued"
    assert await gw.services.billing.close_due() == 0  # closed: nothing left to issue


async def test_the_background_close_issues_last_month_once_past_the_grace(
    stores: Stores, client_for: ClientFor
) -> None:
    clock = FakeClock(at("2026-11-20T00:00:00"))
    gw = gateway(stores, clock)
    client = await client_for(gw)
    tenant = await register(client, plan="professional")
    billing = gw.services.billing
    clock.set(at("2026-12-01T00:00:30"))  # inside the 60 s grace: November stays open
    await billing.close_due()
    assert (
        await client.get(f"{T}/{tenant['id']}/billing/invoices", headers=auth(tenant))
    ).json() == []
    clock.set(at("2026-12-01T00:01:01"))
    await billing.close_due()
    (november,) = (
        await client.get(f"{T}/{tenant['id']}/billing/invoices", headers=auth(tenant))
    ).json()
    # 20 Nov 00:00 to 1 Dec: 11 of 30 days, 4900 * 11/30 = 1796.67 → 1797
    assert november["period"] == "2026-11" and november["total_cents"] == 1797
