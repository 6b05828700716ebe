-- The usage hashes of one slot as the node that holds them has them (cluster_counters.py).
-- KEYS: the hashes. ARGV: max (tally.lua), the node's lineage (identity.py).
-- Returns, per hash, false when the key holds something else than a hash, else a pair: 1 when
-- the hash is stamped with that lineage (restored or checked against the ledger since the
-- node's data set began; 0 otherwise), and its fields and values (HGETALL).

local out = {}
for k = 1, #KEYS do
  local fields = redis.pcall('HGETALL', KEYS[k])
  if fields.err then
    out[k] = false
  else
    out[k] = {redis.call('HGET', KEYS[k], 'hydrated') == ARGV[2] and 1 or 0, fields}
  end
end
return out
