-- One flush's tallies (quota.py RedisCounters.add), applied once: a batch sent again after its
-- reply was lost (same writer, same sequence number) changes nothing. One hash's trouble stays
-- its own: a hash holding a value no tally can (or a key that is not a hash) is set aside and
-- reported, for the caller to restore from the ledger and send its increments again; an
-- increment the hash cannot take (a sum past max; more refunds than calls: ``refunded`` comes
-- last, after the batch's own calls) is skipped and reported. Everything else is applied. A
-- hash takes at most `cap` distinct route fields (route|<class>|<route>): an increment to a
-- further route goes to route|<class>|<other> instead (tallies.py MAX_ROUTES, OTHER_ROUTES).
-- KEYS: the usage hashes, then the writer's marker. ARGV: max (tally.lua), sequence number,
-- marker ttl, hash ttl, cap, other, then per hash the number of its increments and field,
-- amount pairs.
-- Returns {1 (applied) or 0 (applied before), then key index, field, reason per one not
-- applied}; the reason 'set aside' (field '') stands for all of that hash's increments. The
-- marker keeps that report ('<sequence>:<report as msgpack>'): a batch sent again answers it
-- again, so the caller still owes what a set-aside hash did not take when the first answer was
-- lost.

local marker = KEYS[#KEYS]
local seq = tonumber(ARGV[2])
local last = redis.pcall('GET', marker)
if type(last) == 'string' then
  local colon = string.find(last, ':', 1, true)
  local done = tonumber(colon and string.sub(last, 1, colon - 1) or last)
  if done ~= nil and seq <= done then
    if seq == done and colon then
      local read, report = pcall(cmsgpack.unpack, string.sub(last, colon + 1))
      if read and type(report) == 'table' then
        report[1] = 0
        return report
      end
    end
    return {0}
  end
end

local cap, other = tonumber(ARGV[5]), '|' .. ARGV[6]

-- Is this a route field, one of the `cap` a hash takes (not a bucket of other routes)?
local function route(field)
  return string.sub(field, 1, 6) == 'route|' and string.sub(field, -#other) ~= other
end

local function other_routes(field)
  return 'route|' .. string.match(field, '^route|([^|]*)') .. other
end

local function routes(key)
  local n = 0
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if route(field) then
      n = n + 1
    end
  end
  return n
end

-- Can every field the increments may reach take a tally (a route's bucket included)?
local function sound(key, first, n)
  for j = first, first + 2 * n - 1, 2 do
    local fields = {ARGV[j]}
    if route(ARGV[j]) then
      fields[2] = other_routes(ARGV[j])
    end
    for _, field in ipairs(fields) do
      local current = redis.pcall('HGET', key, field)
      if type(current) == 'table' or tally(current) == nil then
        return false
      end
    end
  end
  return true
end

local out = {1}
local i = 7
for k = 1, #KEYS - 1 do
  local n = tonumber(ARGV[i])
  local first = i + 1
  i = first + 2 * n
  if not sound(KEYS[k], first, n) then
    set_aside(KEYS[k])
    out[#out + 1] = k
    out[#out + 1] = ''
    out[#out + 1] = 'set aside'
  else
    local count = nil -- the hash's distinct routes, counted when a new one comes
    for j = first, first + 2 * n - 1, 2 do
      -- the amount goes to Redis as the string it came as (Lua prints 10^15 as 1e+15)
      local field, text = ARGV[j], ARGV[j + 1]
      if route(field) and redis.call('HEXISTS', KEYS[k], field) == 0 then
        count = count or routes(KEYS[k])
        if count >= cap then
          field = other_routes(field)
        else
          count = count + 1
        end
      end
      local after = tally(redis.call('HGET', KEYS[k], field)) + tonumber(text)
      local reason = nil
      if after > max then
        reason = 'the sum would pass the bound'
      elseif field == 'refunded' and after > (tally(redis.call('HGET', KEYS[k], 'calls')) or 0) then
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
end
redis.call('SET', marker, ARGV[2] .. ':' .. cmsgpack.pack(out), 'EX', ARGV[3])
return out
