-- The quota decisions of one event-loop turn (decisions.py), taken in arrival order.
-- KEYS: the distinct usage hashes of the batch. ARGV: max (tally.lua), this server's lineage
-- (identity.py), then four per decision: index into KEYS, limit (-1: none), overage allowed
-- (0/1), day of month. Returns, per decision, admitted (1, 0; -1: the hash is not restored, or
-- not checked against the ledger since this server's data set began (its 'hydrated' stamp is
-- another lineage's); -2: it was corrupt and has been set aside, restore it) and the billable
-- calls after it. A refusal counts under rejected, rejected:quota and rday:<day>.
--
-- Every field a decision may write is read and checked before anything is written, so no
-- write can fail: one tenant's corrupt hash costs its own decisions a restore, not the batch.

local days = {}
for k = 1, #KEYS do
  days[k] = {}
end
for i = 3, #ARGV, 4 do
  days[tonumber(ARGV[i])][ARGV[i + 3]] = true
end

local hashes = {}
for k = 1, #KEYS do
  local fields = {'hydrated', 'calls', 'refunded', 'rejected', 'rejected:quota'}
  for day in pairs(days[k]) do
    fields[#fields + 1] = 'day:' .. day
    fields[#fields + 1] = 'rday:' .. day
  end
  local counts = redis.pcall('HMGET', KEYS[k], unpack(fields))
  local sound = counts.err == nil  -- an error: the key holds something else than a hash
  if sound then
    for f = 2, #fields do
      if tally(counts[f]) == nil then
        sound = false
      end
    end
    -- a refund is of an admitted call: more refunds than calls is corrupt too
    sound = sound and tally(counts[3]) <= tally(counts[2])
  end
  local h = {state = -1, calls = 0, rejected = 0, days = {}, rdays = {}}
  if not sound then
    set_aside(KEYS[k])
    h.state = -2
  elseif counts[1] == ARGV[2] then
    h.state = 1
    h.used = tally(counts[2]) - tally(counts[3])
  end
  hashes[k] = h
end

local out = {}
for i = 3, #ARGV, 4 do
  local h = hashes[tonumber(ARGV[i])]
  if h.state ~= 1 then
    out[#out + 1] = h.state
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
    for day, n in pairs(h.days) do
      redis.call('HINCRBY', KEYS[k], 'day:' .. day, n)
    end
  end
  if h.rejected > 0 then
    redis.call('HINCRBY', KEYS[k], 'rejected', h.rejected)
    redis.call('HINCRBY', KEYS[k], 'rejected:quota', h.rejected)
    for day, n in pairs(h.rdays) do
      redis.call('HINCRBY', KEYS[k], 'rday:' .. day, n)
    end
  end
end
return out
