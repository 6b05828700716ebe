"""The quota decisions of one event-loop turn, packed as one Redis script call.

Requests that arrive together are decided together: one ``EVALSHA`` carries every decision of
the turn, and the script below takes them in arrival order, each seeing the ones before it —
exactly what separate atomic calls would do, at the cost of one. Each distinct usage hash is
named once (``KEYS``) and read once and written once per call, however many decisions fall on
it, so a busy tenant costs Redis one ``HMGET`` and a few ``HINCRBY`` per batch, not three
commands per call.

The command is packed as it grows: the RESP bytes of each hash name and of each
(limit, overage, day) are built once and reused, so adding a decision is two dictionary
lookups and two list appends.
"""

from __future__ import annotations

import asyncio

from tenant_gateway.quota import Admission
from tenant_gateway.redis.lua import load
from tenant_gateway.redis.pipeline import bulk
from tenant_gateway.tallies import MAX_TALLY

__all__ = ["ADMIT_SCRIPT", "Decision", "DecisionBatch"]


Decision = tuple[tuple[str, str], str, int | None, bool]
"""(tenant id, period), day of month, monthly limit (None: none), overage allowed."""

# KEYS and ARGV, and what the script answers: see lua/admit.lua. A hash it cannot use (a field
# that is not a tally, a key of another type) is set aside and answered -2 (restore it), so
# one tenant's corrupt hash never fails the other decisions of the call.
ADMIT_SCRIPT = load("admit")
_PACKED_MAX = bulk(MAX_TALLY)


_INDEXES = [bulk(index) for index in range(1024)]
"""``bulk(i)`` for the hash indexes a batch usually needs."""


class DecisionBatch:
    """Decisions gathered for one script call; each waits on its own future (a request that
    is cancelled cancels only its own). ``entries`` keeps each decision, with whether its hash
    was restored just before, so one found unrestored can be decided again."""

    __slots__ = ("_hashes", "_packed", "entries", "futures")

    def __init__(self) -> None:
        self._hashes: dict[bytes, bytes] = {}  # packed name → packed index into KEYS
        self._packed: list[bytes] = []
        self.entries: list[tuple[Decision, bool]] = []
        self.futures: list[asyncio.Future[Admission]] = []

    def add(
        self,
        packed_name: bytes,
        packed_terms: bytes,
        entry: tuple[Decision, bool],
        future: asyncio.Future[Admission],
    ) -> None:
        """One decision: the hash's packed name, and the packed (limit, overage, day)."""
        index = self._hashes.get(packed_name)
        if index is None:
            number = len(self._hashes) + 1
            index = _INDEXES[number] if number < len(_INDEXES) else bulk(number)
            self._hashes[packed_name] = index
        self._packed += (index, packed_terms)
        self.entries.append(entry)
        self.futures.append(future)

    def command(self, packed_sha: bytes, packed_lineage: bytes) -> bytes:
        """``EVALSHA sha numkeys KEYS… ARGV…`` as RESP (``packed_sha``: ``bulk(sha)``;
        ``packed_lineage``: ``bulk`` of the lineage of the server it goes to, ``identity.py``)."""
        hashes = len(self._hashes)
        words = 5 + hashes + 4 * len(self.futures)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (words, packed_sha, bulk(hashes))
        return b"".join((head, *self._hashes, _PACKED_MAX, packed_lineage, *self._packed))
