"""Single flight: callers that want the same slow answer at the same time share one task.

Used where a burst of requests would otherwise repeat one read: loading a key into the key
cache, restoring a usage hash from the ledger at the start of a month.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Flights"]

logger = logging.getLogger("tenant_gateway")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    def __init__(self, what: str) -> None:
        self._what = what
        self._tasks: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._tasks

    def start(self, key: K, work: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        """The flight for ``key`` under way, or a new one running ``work()``."""
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = asyncio.ensure_future(work())
            task.add_done_callback(functools.partial(self._landed, key))
        return task

    async def join(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """Wait for the flight's answer; a caller that is cancelled leaves it to the others."""
        return await asyncio.shield(self.start(key, work))

    def forget(self) -> None:
        """What the flights under way read may be stale now: later callers start afresh."""
        self._tasks.clear()

    def _landed(self, key: K, task: asyncio.Future[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        # Retrieved here, so a flight nobody waits for any more cannot fail unheard.
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.debug("%s failed: %s", self._what, error)
