"""Time, injected: the gateway never calls ``time.time()`` directly, so tests move it.

A *period* is a calendar month in UTC, written ``YYYY-MM``; quotas and usage are keyed by it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "Clock",
    "Period",
    "Sleep",
    "format_timestamp",
    "system_clock",
]

Clock = Callable[[], float]
"""Seconds since the epoch, like ``time.time``."""

system_clock: Clock = time.time

Sleep = Callable[[float], Awaitable[None]]
"""How background work waits a number of seconds, like ``asyncio.sleep`` (the webhook backoff);
the clock's partner, injected with it."""

_PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """One calendar month in UTC."""

    year: int
    month: int

    @classmethod
    def containing(cls, timestamp: float) -> Period:
        moment = datetime.fromtimestamp(timestamp, UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def parse(cls, text: str) -> Period:
        """``YYYY-MM`` → Period; ``ValueError`` for anything else."""
        match = _PERIOD_RE.match(text)
        if match is None or not 1970 <= int(match.group(1)) <= 9998:
            raise ValueError("period must be YYYY-MM")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    @property
    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    @property
    def end(self) -> datetime:
        """The first instant of the following period."""
        return self.next.start

    def seconds_left(self, timestamp: float) -> int:
        """Whole seconds from ``timestamp`` to the next period, rounded up, at least 1."""
        return max(1, int(-(-(self.end.timestamp() - timestamp) // 1)))


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with a ``Z``, to the second (``2026-11-27T12:00:00Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
