-- A projector that just took a partition's lock claims every entry pending to its group on the partition's
-- log (left by the previous holder), so it applies them before anything new (services/projector/locks.py).
-- KEYS[1]: the partition's projector lock, KEYS[2]: the partition's log. ARGV: token, TTL ms, group, consumer.
-- Result: -1 when the lock is not the caller's (nothing claimed), else how many entries were claimed.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local cursor = '0-0'
local claimed = 0
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, cursor, 'COUNT', 1000, 'JUSTID')
  cursor = r[1]
  claimed = claimed + #r[2]
until cursor == '0-0'
return claimed
