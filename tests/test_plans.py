"""Plans files and calendar periods."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tenant_gateway import DEFAULT_PLANS, ConfigurationError, Period, load_plans
from tenant_gateway.models import Tenant, TenantStatus, effective_seat_limit
from tenant_gateway.plans import PlanFields, plans_schema

SCHEMA_FILE = Path(__file__).parent.parent / "docs" / "plans.schema.json"


def test_defaults_match_the_spec() -> None:
    free, pro, ent = (
        DEFAULT_PLANS["free"],
        DEFAULT_PLANS["professional"],
        DEFAULT_PLANS["enterprise"],
    )
    assert (free.max_users, free.monthly_calls, free.burst_per_second, free.price_cents) == (
        5,
        1000,
        10,
        0,
    )
    assert (pro.max_users, pro.monthly_calls, pro.burst_per_second, pro.price_cents) == (
        50,
        100_000,
        100,
        4900,
    )
    assert (ent.max_users, ent.monthly_calls, ent.burst_per_second, ent.price_cents) == (
        None,
        None,
        1000,
        49900,
    )
    assert not free.allows_overage


def test_load_json_toml_and_mapping(tmp_path: Path) -> None:
    document = {
        "plans": {
            "gold": {
                "max_users": None,
                "monthly_calls": 10,
                "burst_per_second": 2,
                "price_cents": 100,
                "overage_cents_per_1000": 50,
            }
        }
    }
    json_file = tmp_path / "plans.json"
    json_file.write_text(json.dumps(document))
    toml_file = tmp_path / "plans.toml"
    toml_file.write_text(
        "[plans.gold]\nmonthly_calls = 10\nburst_per_second = 2\nprice_cents = 100\n"
        "overage_cents_per_1000 = 50\nmax_users = 7\n"
    )
    for source in (json_file, str(json_file), document):
        gold = load_plans(source)["gold"]
        assert gold.monthly_calls == 10 and gold.allows_overage and gold.max_users is None
    assert load_plans(toml_file)["gold"].max_users == 7
    assert list(load_plans(document)) == ["gold"]  # replaces the defaults


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "plans"),
        ({"plans": {}}, "empty"),
        ({"plans": {"x": {"max_users": 1}}}, "required"),
        (
            {
                "plans": {
                    "x": {
                        "max_users": -1,
                        "monthly_calls": 1,
                        "burst_per_second": 1,
                        "price_cents": 0,
                    }
                }
            },
            "between",
        ),
        (
            {
                "plans": {
                    "x": {
                        "max_users": "5",
                        "monthly_calls": 1,
                        "burst_per_second": 1,
                        "price_cents": 0,
                    }
                }
            },
            "integer",
        ),
        (
            {
                "plans": {
                    "x": {
                        "max_users": 1,
                        "monthly_calls": 1,
                        "burst_per_second": 1,
                        "price_cents": None,
                    }
                }
            },
            "null",
        ),
        (
            {
                "plans": {
                    "x": {
                        "max_users": 1,
                        "monthly_calls": 1,
                        "burst_per_second": 1,
                        "price_cents": 0,
                        "typo": 1,
                    }
                }
            },
            "unknown",
        ),
        ({"plans": {"x": []}}, "object"),
    ],
)
def test_invalid_plans_are_clear(document: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_plans(document)


def test_every_problem_is_named_at_once_with_the_valid_fields() -> None:
    """A plan written from guesses: each problem in one message, the valid fields named."""
    document = {
        "plans": {
            "pro": {"burst": 5, "monthly_quota": 100, "max_users": "5", "price_cents": None},
            "team": {"max_users": 1, "monthly_calls": 1, "burst_per_second": 1, "price_cents": -1},
        }
    }
    with pytest.raises(ConfigurationError) as raised:
        load_plans(document)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("the plans document has 7 problems: ")
    for expected in (
        "plans.pro.burst: unknown field (the fields are max_users, monthly_calls,",
        "plans.pro.monthly_quota: unknown field",
        "plans.pro.max_users: must be an integer or null, got '5'",
        "plans.pro.monthly_calls: required",
        "plans.pro.burst_per_second: required",
        "plans.pro.price_cents: may not be null",
        "plans.team.price_cents: must be between 0 and",
    ):
        assert expected in message
    for field in PlanFields.model_fields:
        assert field in message


@pytest.mark.parametrize("name", ["plans.yaml", "plans.yml", "plans"])
def test_only_json_and_toml_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("plans:\n  gold: {}\n")
    with pytest.raises(ConfigurationError, match=r"JSON \(\.json\) or TOML \(\.toml\) only"):
        load_plans(path)


def test_the_published_schema_is_the_one_enforced() -> None:
    """docs/plans.schema.json is what load_plans checks (regenerate it from plans_schema())."""
    assert json.loads(SCHEMA_FILE.read_text()) == plans_schema()


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_plans(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid"):
        load_plans(broken)


def test_seat_limit_is_the_smaller_of_plan_and_tenant() -> None:
    def tenant(max_users: int | None) -> Tenant:
        return Tenant("t", "n", "free", TenantStatus.ACTIVE, max_users, "a@b.io", datetime.now(UTC))

    assert effective_seat_limit(DEFAULT_PLANS["free"], tenant(None)) == 5
    assert effective_seat_limit(DEFAULT_PLANS["free"], tenant(3)) == 3
    assert effective_seat_limit(DEFAULT_PLANS["free"], tenant(100)) == 5
    assert effective_seat_limit(DEFAULT_PLANS["enterprise"], tenant(100)) == 100
    assert effective_seat_limit(DEFAULT_PLANS["enterprise"], tenant(None)) is None


@pytest.mark.parametrize(
    ("moment", "period", "next_period"),
    [
        (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), "2026-11", "2026-12"),
        (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), "2026-12", "2027-01"),
        (datetime(2028, 2, 29, 12, 0, tzinfo=UTC), "2028-02", "2028-03"),
    ],
)
def test_periods(moment: datetime, period: str, next_period: str) -> None:
    current = Period.containing(moment.timestamp())
    assert str(current) == period and str(current.next) == next_period
    assert Period.parse(period) == current
    assert current.seconds_left(moment.timestamp()) == int((current.end - moment).total_seconds())


def test_seconds_left_rounds_up_and_is_at_least_one() -> None:
    end = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    period = Period(2026, 11)
    assert period.seconds_left(end - 0.2) == 1
    assert period.seconds_left(end - 1.5) == 2


@pytest.mark.parametrize(
    "text", ["2026-13", "2026-00", "26-11", "2026-1", "2026/11", "", "0000-01"]
)
def test_bad_periods(text: str) -> None:
    with pytest.raises(ValueError):
        Period.parse(text)
