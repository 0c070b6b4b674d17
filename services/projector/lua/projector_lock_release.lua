-- Release a projector's partition lock (services/projector/locks.py), only if the caller holds it.
-- KEYS[1]: the partition's projector lock. ARGV: the holder's token.
-- Result: 1 released, 0 the lock is not the caller's (nothing changed).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
