"""The usage burn-down: a month's usage report as the points of an inline SVG chart.

With a monthly quota the chart shows what is left of it at the end of each day, falling from
the quota; without one, the calls made so far, rising. For the open month it projects the
average daily rate so far as a straight line to the month's end, and gives the day at which
that line reaches zero: the day the quota runs out at this rate (none when it lasts the month).
Everything here is arithmetic on the report: the template draws it, no script runs.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tenant_gateway.clock import Period

__all__ = ["Chart", "ChartPoint", "burn_down"]

WIDTH, HEIGHT = 640.0, 260.0
LEFT, RIGHT, TOP, BOTTOM = 64.0, 16.0, 16.0, 32.0
_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class ChartPoint:
    date: str
    calls: int
    """That day's billed calls."""
    rejected: int
    total: int
    """Billed calls from the month's start to the end of that day."""
    remaining: int | None
    """What is left of the quota then (None: no quota)."""
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Chart:
    limit: int | None
    points: list[ChartPoint]
    line: str
    """The polyline of the actual values, from the month's start."""
    projection: tuple[float, float, float, float] | None
    """(x1, y1, x2, y2): the straight-line projection to the month's end."""
    projected_total: int | None
    run_out: str | None
    """The day (YYYY-MM-DD) the quota runs out, or ran out; None when it lasts the month."""
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    zero_y: float
    width: float = WIDTH
    height: float = HEIGHT
    left: float = LEFT
    right: float = WIDTH - RIGHT
    top: float = TOP
    bottom: float = HEIGHT - BOTTOM


def _compact(value: float) -> str:
    number = abs(value)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if number >= size:
            text = f"{value / size:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return f"{value:.0f}"


def burn_down(report: dict[str, Any], now: float) -> Chart:
    """The chart of ``report`` (the admin API's usage report) as seen at ``now``."""
    period = Period.parse(report["period"])
    days_in_month = calendar.monthrange(period.year, period.month)[1]
    start = period.start.timestamp()
    is_open = period == Period.containing(now)
    elapsed_days = (now - start) / _DAY if is_open else float(days_in_month)
    shown = min(days_in_month, math.ceil(elapsed_days)) if is_open else days_in_month
    by_day = {row["date"]: row for row in report["by_day"]}
    limit: int | None = report["limit"]

    totals: list[tuple[str, int, int, int]] = []
    total = 0
    for day in range(1, max(shown, 1) + 1):
        key = f"{period}-{day:02d}"
        row = by_day.get(key, {})
        calls, rejected = int(row.get("api_calls", 0)), int(row.get("rejected_calls", 0))
        total += calls
        totals.append((key, calls, rejected, total))

    projected_total: int | None = None
    rate = 0.0
    if is_open:
        rate = report["api_calls"] / max(elapsed_days, 1 / 24)
        projected_total = round(report["api_calls"] + rate * (days_in_month - elapsed_days))
    run_out = _run_out(totals, limit, report["api_calls"], rate, now, period, is_open)

    if limit is not None:
        low = min(0, limit - total)  # below zero only once calls went past it (overage)
        high = float(limit)
    else:
        low, high = 0, float(max(total, projected_total or 0, 1))
    span = (high - low) or 1.0

    def x_of(day: float) -> float:
        return LEFT + (WIDTH - RIGHT - LEFT) * day / days_in_month

    def y_of(value: float) -> float:
        return TOP + (HEIGHT - BOTTOM - TOP) * (high - value) / span

    def shown_value(cumulative: float) -> float:
        return limit - cumulative if limit is not None else cumulative

    points = [
        ChartPoint(
            date=key,
            calls=calls,
            rejected=rejected,
            total=cumulative,
            remaining=None if limit is None else limit - cumulative,
            x=round(x_of(index + 1), 1),
            y=round(y_of(shown_value(cumulative)), 1),
        )
        for index, (key, calls, rejected, cumulative) in enumerate(totals)
    ]
    line = " ".join(
        [f"{x_of(0):.1f},{y_of(shown_value(0)):.1f}"] + [f"{p.x},{p.y}" for p in points]
    )
    projection = None
    if is_open and projected_total is not None:
        now_value = shown_value(report["api_calls"])
        end_day, end_value = float(days_in_month), shown_value(projected_total)
        if limit is not None and end_value < low < now_value:  # stop where it meets the floor
            end_day = elapsed_days + (now_value - low) / rate
            end_value = low
        projection = (
            round(x_of(elapsed_days), 1),
            round(y_of(now_value), 1),
            round(x_of(end_day), 1),
            round(y_of(end_value), 1),
        )
    y_ticks = [(round(y_of(low + span * i / 4), 1), _compact(low + span * i / 4)) for i in range(5)]
    x_ticks = [
        (round(x_of(day - 0.5), 1), str(day))
        for day in sorted({1, 8, 15, 22, days_in_month})
        if day <= days_in_month
    ]
    return Chart(
        limit=limit,
        points=points,
        line=line,
        projection=projection,
        projected_total=projected_total,
        run_out=run_out,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        zero_y=round(y_of(0), 1),
    )


def _run_out(
    totals: list[tuple[str, int, int, int]],
    limit: int | None,
    calls: int,
    rate: float,
    now: float,
    period: Period,
    is_open: bool,
) -> str | None:
    if limit is None:
        return None
    for key, _, _, cumulative in totals:
        if cumulative >= limit:
            return key  # already used up, that day
    if not is_open or rate <= 0:
        return None
    moment = datetime.fromtimestamp(now, UTC) + timedelta(days=(limit - calls) / rate)
    if moment >= period.end:
        return None
    day: date = moment.date()
    return day.isoformat()
