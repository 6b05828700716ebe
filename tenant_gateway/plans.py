"""Plans: the limits and prices a tenant subscribes to (SPEC §2).

The catalogue is a JSON (or TOML) file, or the same mapping passed to the gateway;
``None`` / ``null`` means unlimited.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tenant_gateway.exceptions import ConfigurationError

__all__ = ["DEFAULT_PLANS", "Plan", "PlanCatalog", "load_plans"]

_LIMIT_MAX = 10**12  # a sanity bound so a typo cannot overflow a Postgres bigint


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    max_users: int | None
    monthly_calls: int | None
    burst_per_second: int | None
    price_cents: int
    overage_cents_per_1000: int | None = None
    currency: str = "USD"
    count_server_errors: bool = True
    """False: calls the wrapped app answers with a 5xx are refunded (not billed, not counted)."""
    seat_price_cents: int | None = None
    """Monthly price of each user beyond ``included_seats``; None: seats are not billed."""
    included_seats: int = 0
    fail_mode: str | None = None
    """"open" or "closed" when the counters are unreachable; None: the gateway's default."""

    @property
    def allows_overage(self) -> bool:
        return self.overage_cents_per_1000 is not None


class PlanCatalog(Mapping[str, Plan]):
    """An immutable name → Plan mapping."""

    def __init__(self, plans: Mapping[str, Plan]) -> None:
        if not plans:
            raise ConfigurationError("the plans catalogue is empty")
        currencies = {plan.currency for plan in plans.values()}
        if len(currencies) > 1:  # an invoice mixing plans must add up in one currency
            raise ConfigurationError(f"all plans must share one currency, got {sorted(currencies)}")
        self._plans = MappingProxyType(dict(plans))

    def __getitem__(self, name: str) -> Plan:
        return self._plans[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)

    def __repr__(self) -> str:
        return f"PlanCatalog({sorted(self._plans)})"


def _limit(plan: str, field: str, value: object, *, nullable: bool) -> int | None:
    if value is None:
        if nullable:
            return None
        raise ConfigurationError(f"plan {plan!r}: {field} may not be null")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"plan {plan!r}: {field} must be an integer, got {value!r}")
    if not 0 <= value <= _LIMIT_MAX:
        raise ConfigurationError(f"plan {plan!r}: {field} must be between 0 and {_LIMIT_MAX}")
    return value


def _plan_from_mapping(name: str, raw: object) -> Plan:
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"plan {name!r} must be an object")
    known = {
        "max_users",
        "monthly_calls",
        "burst_per_second",
        "price_cents",
        "overage_cents_per_1000",
        "currency",
        "count_server_errors",
        "seat_price_cents",
        "included_seats",
        "fail_mode",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigurationError(f"plan {name!r}: unknown fields {sorted(unknown)}")
    for required in ("max_users", "monthly_calls", "burst_per_second", "price_cents"):
        if required not in raw:
            raise ConfigurationError(f"plan {name!r}: {required} is required")
    currency = raw.get("currency", "USD")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise ConfigurationError(f"plan {name!r}: currency must be a 3-letter ISO code")
    price = _limit(name, "price_cents", raw["price_cents"], nullable=False) or 0
    fail_mode = raw.get("fail_mode")
    if fail_mode not in (None, "open", "closed"):
        raise ConfigurationError(f'plan {name!r}: fail_mode must be "open" or "closed"')
    count_server_errors = raw.get("count_server_errors", True)
    if not isinstance(count_server_errors, bool):
        raise ConfigurationError(f"plan {name!r}: count_server_errors must be true or false")
    return Plan(
        name=name,
        max_users=_limit(name, "max_users", raw["max_users"], nullable=True),
        monthly_calls=_limit(name, "monthly_calls", raw["monthly_calls"], nullable=True),
        burst_per_second=_limit(name, "burst_per_second", raw["burst_per_second"], nullable=True),
        price_cents=price,
        overage_cents_per_1000=_limit(
            name, "overage_cents_per_1000", raw.get("overage_cents_per_1000"), nullable=True
        ),
        currency=currency.upper(),
        count_server_errors=count_server_errors,
        fail_mode=fail_mode,
        seat_price_cents=_limit(
            name, "seat_price_cents", raw.get("seat_price_cents"), nullable=True
        ),
        included_seats=_limit(name, "included_seats", raw.get("included_seats", 0), nullable=False)
        or 0,
    )


def load_plans(source: PlanCatalog | str | Path | Mapping[str, Any] | None) -> PlanCatalog:
    """A catalogue as it is, or from a JSON/TOML file path, a mapping shaped like that file, or
    the defaults."""
    if source is None:
        return DEFAULT_PLANS
    if isinstance(source, PlanCatalog):
        return source
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read plans file {path}: {exc.strerror}") from exc
        try:
            document: object = (
                tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
            )
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"plans file {path} is not valid: {exc}") from exc
    else:
        document = source
    if not isinstance(document, Mapping) or not isinstance(document.get("plans"), Mapping):
        raise ConfigurationError('the plans document must be {"plans": {name: {...}}}')
    plans = {}
    for name, raw in document["plans"].items():
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ConfigurationError(f"invalid plan name {name!r}")
        plans[name] = _plan_from_mapping(name, raw)
    return PlanCatalog(plans)


DEFAULT_PLANS = PlanCatalog(
    {
        "free": Plan("free", 5, 1_000, 10, 0),
        "professional": Plan("professional", 50, 100_000, 100, 4_900),
        "enterprise": Plan("enterprise", None, None, 1_000, 49_900),
    }
)
