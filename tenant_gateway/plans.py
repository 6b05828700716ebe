"""Plans: the limits and prices a tenant subscribes to.

The catalogue is a JSON (or TOML) file, or the same mapping passed to the gateway, shaped as
``PlansFile`` (its JSON Schema: ``plans_schema()``); ``None`` / ``null`` means unlimited.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from tenant_gateway.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_PLANS",
    "Plan",
    "PlanCatalog",
    "PlanFields",
    "PlansFile",
    "load_plans",
    "plans_schema",
]

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


_Limit = Annotated[int, Field(ge=0, le=_LIMIT_MAX)]


class PlanFields(BaseModel):
    """One plan as the plans file writes it (``null``: unlimited)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_users: _Limit | None = Field(description="Users a tenant may have; null: unlimited.")
    monthly_calls: _Limit | None = Field(
        description="Metered calls a calendar month (UTC); null: unlimited."
    )
    burst_per_second: _Limit | None = Field(description="Calls a second; null: no burst limit.")
    price_cents: _Limit = Field(description="The monthly price, in cents of `currency`.")
    overage_cents_per_1000: _Limit | None = Field(
        None,
        description="Price of each 1,000 calls past `monthly_calls`; null: calls past the quota"
        " are refused (429) instead of billed.",
    )
    currency: Annotated[str, Field(pattern="^[A-Za-z]{3}$")] = Field(
        "USD", description="ISO 4217 code; every plan of a catalogue must share one."
    )
    count_server_errors: bool = Field(
        True, description="false: calls the app answers with a 5xx are refunded."
    )
    seat_price_cents: _Limit | None = Field(
        None, description="Monthly price of each user beyond `included_seats`; null: not billed."
    )
    included_seats: _Limit = Field(0, description="Users the monthly price includes.")
    fail_mode: Literal["open", "closed"] | None = Field(
        None,
        description="When the counters are unreachable: open (admit, count in process) or closed"
        " (503); null: the gateway's `redis_fail_mode`.",
    )


class PlansFile(BaseModel):
    """The plans file: ``{"plans": {name: {...}}}``."""

    model_config = ConfigDict(extra="forbid", strict=True, title="tenant-gateway plans")

    plans: dict[Annotated[str, Field(min_length=1, max_length=64)], PlanFields]


def plans_schema() -> dict[str, Any]:
    """The plans file's JSON Schema (``docs/plans.schema.json`` is this, committed)."""
    return PlansFile.model_json_schema()


_SHAPE = '{"plans": {name: {field: value, ...}, ...}}'
_FIELDS = ", ".join(PlanFields.model_fields)
_REQUIRED = ", ".join(name for name, f in PlanFields.model_fields.items() if f.is_required())
_NULLABLE = frozenset(
    name for name, f in PlanFields.model_fields.items() if type(None) in get_args(f.annotation)
)


def _problem(error: ErrorDetails) -> str:
    """One validation error, said so that the file's author can fix it."""
    where = ".".join(str(part) for part in error["loc"] if part != "[key]")
    kind, value = error["type"], error["input"]
    if len(error["loc"]) == 1 and kind in ("missing", "extra_forbidden"):
        problem = "required" if kind == "missing" else "unknown field"
        return f"{where}: {problem} (the document is {_SHAPE})"
    if kind == "missing":
        return f"{where}: required (every plan has {_REQUIRED})"
    if kind == "extra_forbidden":
        return f"{where}: unknown field (the fields are {_FIELDS})"
    if kind in ("model_type", "dict_type"):
        return f"{where or 'the document'}: must be an object, got {value!r:.40}"
    if kind == "int_type":
        if value is None:
            return f"{where}: may not be null"
        tail = " or null" if error["loc"][-1] in _NULLABLE else ""
        return f"{where}: must be an integer{tail}, got {value!r:.40}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{where}: must be between 0 and {_LIMIT_MAX}, got {value!r:.40}"
    if kind == "string_pattern_mismatch":
        return f"{where}: must be a 3-letter ISO currency code, got {value!r:.40}"
    if kind in ("string_too_short", "string_too_long"):
        return f"{where or 'a plan name'}: a plan name has 1 to 64 characters, got {value!r:.70}"
    if kind == "literal_error":
        return f'{where}: must be "open", "closed" or null, got {value!r:.40}'
    if kind == "bool_type":
        return f"{where}: must be true or false, got {value!r:.40}"
    return f"{where}: {error['msg']}"


def load_plans(source: PlanCatalog | str | Path | Mapping[str, Any] | None) -> PlanCatalog:
    """A catalogue as it is, or from a JSON/TOML file path, a mapping shaped like that file, or
    the defaults. Every problem of the document is reported at once, in one line."""
    if source is None:
        return DEFAULT_PLANS
    if isinstance(source, PlanCatalog):
        return source
    document = _read(Path(source)) if isinstance(source, str | Path) else source
    try:
        parsed = PlansFile.model_validate(document)
    except ValidationError as exc:
        found = [_problem(error) for error in exc.errors()]
        plural = "s" if len(found) > 1 else ""
        raise ConfigurationError(
            f"the plans document has {len(found)} problem{plural}: " + "; ".join(found)
        ) from None
    return PlanCatalog(
        {
            name: Plan(
                name=name,
                max_users=fields.max_users,
                monthly_calls=fields.monthly_calls,
                burst_per_second=fields.burst_per_second,
                price_cents=fields.price_cents,
                overage_cents_per_1000=fields.overage_cents_per_1000,
                currency=fields.currency.upper(),
                count_server_errors=fields.count_server_errors,
                seat_price_cents=fields.seat_price_cents,
                included_seats=fields.included_seats,
                fail_mode=fields.fail_mode,
            )
            for name, fields in parsed.plans.items()
        }
    )


def _read(path: Path) -> object:
    """The document of a ``.json`` or ``.toml`` file."""
    parse = {".json": json.loads, ".toml": tomllib.loads}.get(path.suffix.lower())
    if parse is None:
        suffix = path.suffix or "a name without a suffix"
        raise ConfigurationError(
            f"plans file {path}: JSON (.json) or TOML (.toml) only, not {suffix}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read plans file {path}: {exc.strerror}") from exc
    try:
        return parse(text)
    except ValueError as exc:  # TOMLDecodeError is a ValueError
        raise ConfigurationError(f"plans file {path} is not valid: {exc}") from exc


DEFAULT_PLANS = PlanCatalog(
    {
        "free": Plan("free", 5, 1_000, 10, 0),
        "professional": Plan("professional", 50, 100_000, 100, 4_900),
        "enterprise": Plan("enterprise", None, None, 1_000, 49_900),
    }
)
