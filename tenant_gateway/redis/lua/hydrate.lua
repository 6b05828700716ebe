-- Restore a usage hash from the ledger, once (quota.py): adds the ledger's counts to whatever
-- arrived meanwhile (only breakdowns can: decisions wait for this), then marks the hash whole.
-- A key holding something else than a hash is set aside first; a count the hash cannot take
-- (a corrupt field, a sum past max) is skipped.
-- KEYS[1]: the hash. ARGV: max (tally.lua), ttl, then field, amount pairs.
-- Returns 0 (already whole), 1 (restored) or 2 (restored after setting a corrupt key aside).

local restored = 1
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  set_aside(KEYS[1])
  restored = 2
elseif redis.call('HEXISTS', KEYS[1], 'hydrated') == 1 then
  return 0
end
for i = 3, #ARGV - 1, 2 do
  local current = tally(redis.call('HGET', KEYS[1], ARGV[i]))
  if current ~= nil and current + tonumber(ARGV[i + 1]) <= max then
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], 'hydrated', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return restored
