-- Renew a projector's partition lock (services/projector/locks.py), only while the caller still holds it.
-- KEYS[1]: the partition's projector lock. ARGV: the holder's token, TTL ms.
-- Result: 1 renewed, 0 the lock is not (or no longer) the caller's.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
