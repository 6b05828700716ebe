-- Shared by every script (prepended when loaded). ARGV[1] is MAX_TALLY (tallies.py): a stored
-- tally is ASCII digits within 0..max; anything else is corrupt and never added to.
local max = tonumber(ARGV[1])

-- A stored value as a tally (absent: 0), or nil when it cannot be one.
local function tally(value)
  if value == false or value == nil then
    return 0
  end
  if type(value) ~= 'string' or #value > 16 or not string.find(value, '^%d+$') then
    return nil
  end
  local number = tonumber(value)
  if number > max then
    return nil
  end
  return number
end

-- Move a hash this code cannot use out of the way (kept a week for a look); the caller
-- restores a fresh one from the ledger.
local function set_aside(key)
  local aside = key .. ':set-aside'
  redis.call('RENAME', key, aside)
  redis.call('EXPIRE', aside, 604800)
end
