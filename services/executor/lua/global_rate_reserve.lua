-- Reserve tokens from the global limiter's window counter (ORQ_GLOBAL_RATE, services/executor/global_rate.py).
-- KEYS[1]: the window's counter (one key, its own slot). ARGV: tokens wanted, limit per window, counter TTL ms
-- (set when the window's first reservation creates it).
-- Takes what is wanted, then gives back whatever passed the limit. Result: how many tokens were granted.

local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
local excess = used - tonumber(ARGV[2])
if excess > 0 then
  local back = math.min(excess, tonumber(ARGV[1]))
  redis.call('DECRBY', KEYS[1], back)
  return tonumber(ARGV[1]) - back
end
return tonumber(ARGV[1])
