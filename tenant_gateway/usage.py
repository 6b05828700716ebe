"""Usage recording off the hot path, and the usage report (docs/plans.md, Usage).

On a plan with a monthly quota, admitted calls and quota refusals are counted by the quota
decision itself (``quota.py``). Everything else is tallied here in process memory with no
I/O — route template and status class after the response, refunds, calls of plans without a
quota, burst refusals — and added to the counter store in one batch every flush interval (and
at shutdown), so the admin API is exact within about one interval of the calls.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from starlette.routing import Mount
from starlette.types import Scope

from tenant_gateway.clock import Period, format_timestamp
from tenant_gateway.models import UsageKey
from tenant_gateway.quota import CounterStore

__all__ = ["RouteOf", "UsageRecorder", "billed_calls", "usage_csv", "usage_report"]

logger = logging.getLogger("tenant_gateway")

RouteOf: TypeAlias = Callable[[Scope], "str | None"]
"""A setting: the route template of an answered call from its scope (None: unmatched)."""


_UNMATCHED_ROUTE = "(unmatched)"
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "WS")
)
_OTHER_METHOD = "OTHER"
"""Any token is a valid HTTP method: those outside ``_METHODS`` share one usage field."""

_Answered = tuple[UsageKey, str, str | None, str, int]
"""A call answered: (usage key, method, the matched route's ``path``, mount prefix, status
class). The route template is spelled out from these once per flush, not once per call."""

_MOUNT_DEPTH = 16
"""Mounts within mounts followed at most (a bound for an app whose mounts contain themselves)."""


def _route_template(method: str, template: str | None, mount_prefix: str) -> str:
    """``GET /api/v1/projects/{id}``: the template of the route the app matched, not the path."""
    if template is None:
        return f"{method} {_UNMATCHED_ROUTE}"
    return f"{method} {mount_prefix}{template}"


def _mounted(router: object, prefix: str) -> tuple[str, object] | None:
    """The templates of the mounts that took ``prefix`` (``/orgs/{org}`` for ``/orgs/acme``)
    and the last of them, found as Starlette's router found them: in each router, the first
    ``Mount`` whose pattern matches. None when they are not found there (the app routes by
    ``Host``, or sets ``root_path`` itself): the actual prefix is kept then, and the counter
    store's cap on route fields (``tallies.MAX_ROUTES``) bounds what it costs."""
    routes = getattr(router, "routes", None)
    template, rest = "", prefix
    mount: object = None
    for _ in range(_MOUNT_DEPTH):
        if not rest:
            return template, mount
        for route in routes if isinstance(routes, list) else ():
            match = route.path_regex.match(rest + "/") if isinstance(route, Mount) else None
            if match is not None:
                # the pattern ends in "/{path:path}": what precedes it is what the mount took
                rest = rest[len(rest) - len(match["path"]) :]
                template += route.path
                mount, routes = route, route.routes
                break
        else:
            return None
    return None


class UsageRecorder:
    def __init__(self, counters: CounterStore) -> None:
        self._counters = counters
        self._pending: defaultdict[UsageKey, Counter[str]] = defaultdict(Counter)
        # The two tallies every call makes, kept as plain counts by tuple until the flush
        # (a third of the cost of formatting and counting fields per call).
        self._admitted: dict[tuple[UsageKey, str], int] = {}
        self._answered: dict[_Answered, int] = {}
        self._lock = asyncio.Lock()
        self._hook_failed = False

    def record(
        self, key: UsageKey, scope: Scope, root_path: str, status: int, route_of: RouteOf | None
    ) -> None:
        """Tally one answered call by route and status class (hot path: no I/O, one count).

        The route is what the app matched, read from ``scope`` once it has answered: the
        ``path`` of the route it matched (``scope["route"]``: Starlette, FastAPI), else the
        template an app or framework left in ``scope["path_template"]`` (Litestar; the Django
        middleware and Quart hook of ``frameworks.py``); a template that is not a string
        counts as unmatched and never reaches the dict key. ``route_of`` (a setting), when
        given, answers instead. Under mounts, the path they took (``root_path`` grown since
        ``root_path``) is spelled as their templates where ``scope["router"]`` has them:
        every org under ``/orgs/{org}`` is one route. A method token outside the standard
        ones counts as ``OTHER``."""
        method = scope.get("method", "WS")
        if route_of is not None:
            template, mount_prefix = self._asked(route_of, scope), ""
        else:
            route = scope.get("route")
            template = scope.get("path_template") if route is None else getattr(route, "path", None)
            mount_prefix = scope.get("root_path", "")[len(root_path) :]
            if mount_prefix:
                mounted = _mounted(scope.get("router"), mount_prefix)
                if mounted is not None:
                    mount_prefix, mount = mounted
                    if route is mount:  # a mounted app that is no Starlette router answered
                        template = scope.get("path_template", "")
        answered = (
            key,
            method if method in _METHODS else _OTHER_METHOD,
            template if isinstance(template, str) else None,
            mount_prefix,
            status // 100,
        )
        self._answered[answered] = self._answered.get(answered, 0) + 1

    def _asked(self, route_of: RouteOf, scope: Scope) -> object:
        """``route_of``'s answer; a failure of it counts the call as unmatched (logged once:
        it would fail alike for every call)."""
        try:
            return route_of(scope)
        except Exception:
            if not self._hook_failed:
                self._hook_failed = True
                logger.exception("route_of failed: calls it fails on count as unmatched")
            return None

    def admitted(self, key: UsageKey, day: str) -> None:
        """Count a call of a plan with no monthly quota: no decision depends on the count, so
        it needs no round trip; it reaches the counters with the next batch."""
        admitted = (key, day)
        self._admitted[admitted] = self._admitted.get(admitted, 0) + 1

    def _spell_out(self) -> None:
        """Add the per-call tallies to the pending fields the counter store keeps."""
        admitted, self._admitted = self._admitted, {}
        answered, self._answered = self._answered, {}
        pending = self._pending
        for (key, day), calls in admitted.items():
            fields = pending[key]
            fields["calls"] += calls
            fields["day:" + day] += calls
        for (key, method, template, prefix, status_class), calls in answered.items():
            route = _route_template(method, template, prefix)
            pending[key][f"route|{status_class}xx|{route}"] += calls

    def rejected(self, key: UsageKey, day: str, reason: str) -> None:
        """Count a call refused before the quota decision (the burst limit)."""
        pending = self._pending[key]
        pending["rejected"] += 1
        pending["rejected:" + reason] += 1
        pending["rday:" + day] += 1

    def refund(self, key: UsageKey, day: str) -> None:
        """Un-bill one admitted call (a 5xx on a plan that does not count them)."""
        pending = self._pending[key]
        pending["refunded"] += 1
        pending["refday:" + day] += 1

    async def flush(self) -> None:
        """Hand the pending tallies to the counter store, which owes them from then on: if it
        cannot add them now it keeps them for the next flush (never re-added here, which
        would count twice what a failed call had already added)."""
        async with self._lock:
            self._spell_out()
            batch, self._pending = self._pending, defaultdict(Counter)
            await self._counters.add(batch)


def billed_calls(tallies: Mapping[str, int]) -> int:
    """Admitted calls less refunded ones: what the usage report and the invoice count."""
    return max(0, tallies.get("calls", 0) - tallies.get("refunded", 0))


def usage_report(
    *,
    tenant_id: str,
    period: Period,
    tallies: dict[str, int],
    limit: int | None,
    users: int,
    max_users: int | None,
) -> dict[str, object]:
    calls = billed_calls(tallies)
    days: defaultdict[str, dict[str, int]] = defaultdict(
        lambda: {"api_calls": 0, "rejected_calls": 0}
    )
    routes: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    for field, value in tallies.items():
        kind, _, rest = field.partition(":")
        if kind == "day":
            days[rest]["api_calls"] += value
        elif kind == "refday":
            days[rest]["api_calls"] -= value
        elif kind == "rday":
            days[rest]["rejected_calls"] += value
        elif kind == "rejected" and rest:
            reasons[rest] = value
        elif field.startswith("route|"):
            _, status_class, route = field.split("|", 2)
            routes.setdefault(route, {})[status_class] = value
    return {
        "tenant_id": tenant_id,
        "period": str(period),
        "api_calls": calls,
        "rejected_calls": tallies.get("rejected", 0),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "refunded_calls": tallies.get("refunded", 0),
        "limit": limit,
        "remaining": None if limit is None else max(0, limit - calls),
        "resets_at": format_timestamp(period.end),
        "users": users,
        "max_users": max_users,
        "by_day": [{"date": f"{period}-{day}", **counts} for day, counts in sorted(days.items())],
        "by_route": [
            {
                "route": route,
                "calls": sum(statuses.values()),
                "by_status": dict(sorted(statuses.items())),
            }
            for route, statuses in sorted(routes.items())
        ],
    }


def usage_csv(report: Mapping[str, Any]) -> str:
    """The usage report as CSV: one row per total, day, route and status class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["period", "dimension", "key", "status_class", "api_calls", "rejected_calls"])
    period = report["period"]
    writer.writerow([period, "total", period, "", report["api_calls"], report["rejected_calls"]])
    for day in report["by_day"]:
        writer.writerow([period, "day", day["date"], "", day["api_calls"], day["rejected_calls"]])
    for route in report["by_route"]:
        for status_class, calls in route["by_status"].items():
            writer.writerow([period, "route", route["route"], status_class, calls, ""])
    return out.getvalue()
