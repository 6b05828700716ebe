"""Progress of the long commands (``export``, ``import``, ``billing close``) on a terminal.

One line on stderr, redrawn in place at most every ``interval`` seconds: what is done (rows or
tenants, and bytes), the rate, and with a known total the share done and the time left. Only
when stderr is a terminal and ``--quiet`` is not given: a pipe, a file or a log gets nothing,
and stdout (an export's stream) never does.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "format_bytes"]

_MEASURABLE = 0.1
"""Seconds of work before a rate (and a time left) is shown."""


def format_bytes(size: float) -> str:
    """``size`` in B, KiB, MiB or GiB: three significant figures, or whole units past 100."""
    units = ["B", "KiB", "MiB", "GiB"]
    unit = units.pop(0)
    while size >= 1024 and units:
        size, unit = size / 1024, units.pop(0)
    return f"{size:,.0f} {unit}" if size >= 100 or unit == "B" else f"{size:.3g} {unit}"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to (of the one stdout is on, or $COLUMNS,
    or 80 when it does not say)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns or shutil.get_terminal_size().columns


class Progress:
    """``with Progress.on_terminal("export tenant_x", quiet=...) as progress:``, then
    ``progress.add(rows, size)`` as the work goes, ``progress.total = n`` once it is known.
    Disabled, every call does nothing."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None,
        *,
        unit: str = "rows",
        total: int | None = None,
        interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] = lambda: 80,
    ) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.done = 0
        self.size = 0
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._width = width
        self._started = clock()
        self._drawn_at: float | None = None

    @classmethod
    def on_terminal(
        cls, label: str, *, quiet: bool, stream: TextIO | None = None, unit: str = "rows"
    ) -> Progress:
        """Shown on ``stream`` (stderr) only if it is a terminal and not ``quiet``."""
        stream = sys.stderr if stream is None else stream
        if quiet or not stream.isatty():
            return cls(label, None, unit=unit)
        return cls(label, stream, unit=unit, width=lambda: _columns(stream))

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def add(self, done: int = 0, size: int = 0) -> None:
        """``done`` more rows (tenants…) and ``size`` more bytes; redrawn if it is time."""
        self.done += done
        self.size += size
        if self._stream is not None:
            now = self._clock()
            if self._drawn_at is None or now - self._drawn_at >= self._interval:
                self._draw(self._stream, self.line(now), now)

    def line(self, now: float, *, final: bool = False) -> str:
        """The progress line at ``now``."""
        elapsed = now - self._started
        parts = [f"{self.label}: {self.done:,}"]
        if self.total:
            parts[0] += (
                f" / {self.total:,} {self.unit} ({min(100 * self.done // self.total, 100)}%)"
            )
        else:
            parts[0] += f" {self.unit}"
        if self.size:
            parts.append(format_bytes(self.size))
        if final:
            parts.append(f"in {_duration(elapsed)}")
        if elapsed < _MEASURABLE:  # a rate over an instant says nothing
            return " · ".join(parts)
        rate = self.done / elapsed
        parts.append(f"{rate:,.0f} {self.unit}/s")
        if self.size:
            parts[-1] += f", {format_bytes(self.size / elapsed)}/s"
        if not final and self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return " · ".join(parts)

    def _draw(self, stream: TextIO, line: str, now: float) -> None:
        limit = max(self._width() - 1, 20)  # a wrapped line would not be redrawn in place
        stream.write("\r" + line[:limit] + "\x1b[K")
        stream.flush()
        self._drawn_at = now

    def close(self) -> None:
        """The final line (the totals, the time taken), left on the terminal."""
        stream, self._stream = self._stream, None
        if stream is not None:
            now = self._clock()
            self._draw(stream, self.line(now, final=True), now)
            stream.write("\n")
            stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
