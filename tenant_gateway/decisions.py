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
from dataclasses import dataclass

from tenant_gateway.redis_pipeline import bulk

__all__ = ["ADMIT_SCRIPT", "Admission", "Decision", "DecisionBatch"]


@dataclass(slots=True)  # not frozen: one is built per call, and frozen doubles that cost
class Admission:
    admitted: bool
    used: int
    """Billable calls in the period, this one included when admitted."""


Decision = tuple[tuple[str, str], str, int | None, bool]
"""(tenant id, period), day of month, monthly limit (None: none), overage allowed."""

# KEYS: the distinct usage hashes of the batch. ARGV, four per decision in arrival order:
# index into KEYS, limit (-1: none), overage allowed (0/1), day of month. Returns, per
# decision, admitted (1, 0, or -1: the hash is not restored yet) and the billable calls after
# it. A refusal counts under rejected, rejected:quota and rday:<day>.
ADMIT_SCRIPT = """
local hashes = {}
for k = 1, #KEYS do
  local counts = redis.call('HMGET', KEYS[k], 'hydrated', 'calls', 'refunded')
  hashes[k] = {
    whole = counts[1] ~= false,
    used = tonumber(counts[2] or '0') - tonumber(counts[3] or '0'),
    calls = 0, rejected = 0, days = {}, rdays = {},
  }
end
local out = {}
for i = 1, #ARGV, 4 do
  local h = hashes[tonumber(ARGV[i])]
  if not h.whole then
    out[#out + 1] = -1
    out[#out + 1] = 0
  else
    local limit = tonumber(ARGV[i + 1])
    local day = ARGV[i + 3]
    if limit >= 0 and h.used >= limit and ARGV[i + 2] == '0' then
      h.rejected = h.rejected + 1
      h.rdays[day] = (h.rdays[day] or 0) + 1
      out[#out + 1] = 0
    else
      h.used = h.used + 1
      h.calls = h.calls + 1
      h.days[day] = (h.days[day] or 0) + 1
      out[#out + 1] = 1
    end
    out[#out + 1] = h.used
  end
end
for k = 1, #KEYS do
  local h = hashes[k]
  if h.calls > 0 then
    redis.call('HINCRBY', KEYS[k], 'calls', h.calls)
    for day, n in pairs(h.days) do redis.call('HINCRBY', KEYS[k], 'day:' .. day, n) end
  end
  if h.rejected > 0 then
    redis.call('HINCRBY', KEYS[k], 'rejected', h.rejected)
    redis.call('HINCRBY', KEYS[k], 'rejected:quota', h.rejected)
    for day, n in pairs(h.rdays) do redis.call('HINCRBY', KEYS[k], 'rday:' .. day, n) end
  end
end
return out
"""


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

    def command(self, packed_sha: bytes) -> bytes:
        """``EVALSHA sha numkeys KEYS… ARGV…`` as RESP (``packed_sha``: ``bulk(sha)``)."""
        hashes = len(self._hashes)
        words = 3 + hashes + 4 * len(self.futures)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (words, packed_sha, bulk(hashes))
        return b"".join((head, *self._hashes, *self._packed))
