-- One flush's tallies (quota.py RedisCounters.add), applied once: a batch sent again after its
-- reply was lost (same writer, same sequence number) changes nothing. Each increment stands
-- alone: one the hash cannot take (a key that is not a hash, a field that is not a tally, a sum
-- past max, more refunds than calls: ``refunded`` comes last, after the batch's own calls) is
-- skipped and reported, every other one applied.
-- KEYS: the usage hashes, then the writer's marker. ARGV: max (tally.lua), sequence number,
-- marker ttl, hash ttl, then per hash the number of its increments and field, amount pairs.
-- Returns {1 (applied) or 0 (applied before), then key index, field, reason per skipped one}.

local marker = KEYS[#KEYS]
local seq = tonumber(ARGV[2])
local last = redis.pcall('GET', marker)
if type(last) == 'string' and tonumber(last) ~= nil and seq <= tonumber(last) then
  return {0}
end

local function calls_of(key)
  return tally(redis.call('HGET', key, 'calls')) or 0
end

local out = {1}
local i = 5
for k = 1, #KEYS - 1 do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    -- the amount goes to Redis as the string it came as (Lua prints 10^15 as 1e+15)
    local field, text = ARGV[i], ARGV[i + 1]
    local amount = tonumber(text)
    i = i + 2
    local current = redis.pcall('HGET', KEYS[k], field)
    local reason = nil
    if type(current) == 'table' and current.err then
      reason = current.err
    elseif tally(current) == nil then
      reason = 'the stored value is not a tally'
    elseif tally(current) + amount > max then
      reason = 'the sum would pass the bound'
    elseif field == 'refunded' and tally(current) + amount > calls_of(KEYS[k]) then
      reason = 'more refunds than calls'
    end
    if reason then
      out[#out + 1] = k
      out[#out + 1] = field
      out[#out + 1] = reason
    else
      redis.call('HINCRBY', KEYS[k], field, text)
    end
  end
  redis.call('EXPIRE', KEYS[k], ARGV[4], 'NX')
end
redis.call('SET', marker, ARGV[2], 'EX', ARGV[3])
return out
