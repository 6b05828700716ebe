-- Which usage hashes of one slot are not stamped with the lineage of the node that holds them
-- (cluster_counters.py, identity.py): not restored from the ledger yet, not checked against it
-- since the node's data set began, or not a hash. The flush restores or checks those first.
-- KEYS: the hashes. ARGV: max (tally.lua), the node's lineage.
-- Returns the indexes (into KEYS, from 1) of those hashes.

local out = {}
for k = 1, #KEYS do
  local stamp = redis.pcall('HGET', KEYS[k], 'hydrated')
  if stamp ~= ARGV[2] then
    out[#out + 1] = k
  end
end
return out
