-- Restore a usage hash from the ledger (quota.py), or check it against the ledger, once per
-- lineage of the server's data set (identity.py): the 'hydrated' field holds the lineage the
-- hash was last restored or checked on.
-- Not restored yet: adds the ledger's counts to whatever arrived meanwhile (only breakdowns
-- can: decisions wait for this). Stamped with another lineage (the server restarted from an
-- older dump, a replica was promoted, a primary came back as another's replica): the hash may
-- have lost writes since, so each count the ledger holds higher is raised to the ledger's, and
-- none is lowered (the ledger holds snapshots of the hash, so it is never ahead of the truth).
-- A key holding something else than a hash is set aside first; a count the hash cannot take
-- (a corrupt field, a sum past max) is skipped.
-- KEYS[1]: the hash. ARGV: max (tally.lua), ttl, lineage, then field, amount pairs.
-- Returns 0 (already checked on this lineage), 1 (restored), 2 (restored after setting a
-- corrupt key aside), 3 (checked: nothing was lower than the ledger) or 4 (raised to the ledger).

local restored = 1
local kind = redis.call('TYPE', KEYS[1]).ok
local stamp = false
if kind ~= 'hash' and kind ~= 'none' then
  set_aside(KEYS[1])
  restored = 2
else
  stamp = redis.call('HGET', KEYS[1], 'hydrated')
  if stamp == ARGV[3] then
    return 0
  end
end
if stamp then
  restored = 3
end
for i = 4, #ARGV - 1, 2 do
  local current = tally(redis.call('HGET', KEYS[1], ARGV[i]))
  local ledger = tonumber(ARGV[i + 1])
  if not stamp then
    if current ~= nil and current + ledger <= max then
      redis.call('HINCRBY', KEYS[1], ARGV[i], ledger)
    end
  elseif current ~= nil and current < ledger then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    restored = 4
  end
end
redis.call('HSET', KEYS[1], 'hydrated', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return restored
