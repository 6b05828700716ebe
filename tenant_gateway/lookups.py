"""Key lookups asked for together, answered by one directory query.

A key cache filled from cold (a restart with thousands of keys in use), or refreshed as a minute
of keys reaches the end of its life together, asks the directory for many keys within
milliseconds. Each lookup on PostgreSQL is a transaction of five round trips whatever it reads,
so ``KeyLookups`` gathers them: the digests asked for while a query is under way wait for it to
land and go together in the next one (at most ``max_batch`` a query); a digest asked for while
none is under way goes at the end of the event-loop turn, with whatever else the turn asked
for. A lone lookup waits for nothing; under a burst, one query carries as many as came while
the last one ran.

Each caller awaits the answer for its own digest (``None``: no such key). A query that fails
fails every digest it carried, with its error.
"""

from __future__ import annotations

import asyncio

from tenant_gateway.directory import TenantDirectory
from tenant_gateway.models import ApiKeyRecord, Tenant

__all__ = ["KeyLookups"]

Found = tuple[ApiKeyRecord, Tenant] | None

MAX_BATCH = 500
"""Digests one query carries at most."""


class KeyLookups:
    def __init__(self, directory: TenantDirectory, *, max_batch: int = MAX_BATCH) -> None:
        self._directory = directory
        self._max_batch = max_batch
        self._waiting: dict[bytes, asyncio.Future[Found]] = {}
        self._busy = False
        """A query is under way, or one is due at the end of this turn."""

    def find(self, key_hash: bytes) -> asyncio.Future[Found]:
        """The key with this digest and its tenant (None when there is none), looked up with
        the others asked for at about the same time."""
        future = self._waiting.get(key_hash)
        if future is None:
            future = self._waiting[key_hash] = asyncio.get_running_loop().create_future()
            if not self._busy:
                self._busy = True
                asyncio.get_running_loop().call_soon(self._send)
        return future

    def _send(self) -> None:
        if not self._waiting:
            self._busy = False
            return
        batch: dict[bytes, asyncio.Future[Found]] = {}
        waiting = self._waiting
        for key_hash in list(waiting)[: self._max_batch]:
            batch[key_hash] = waiting.pop(key_hash)
        task = asyncio.ensure_future(self._query(batch))
        task.add_done_callback(lambda _: self._send())

    async def _query(self, batch: dict[bytes, asyncio.Future[Found]]) -> None:
        try:
            found = await self._directory.find_keys(batch.keys())
        except Exception as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
        except BaseException:  # cancelled (the gateway stops): so are its callers
            for future in batch.values():
                future.cancel()
            raise
        else:
            for key_hash, future in batch.items():
                if not future.done():
                    future.set_result(found.get(key_hash))

    def __len__(self) -> int:
        """Digests waiting for a query."""
        return len(self._waiting)
