-- Record a robot's call as its 'last_seen' only when the key's hash matches (shared/domain/robots/registry.py), then answer the
-- robot's hash: one round trip. The caller still compares the hash in constant time before trusting the reply.
-- KEYS[1]: the robot's hash, KEYS[2]: its partition's slot guard (never written, see shared/log/keys.py).
-- ARGV: SHA-256 of the key the caller sent, now ms. Result: the hash (flat).

local stored = redis.call('HGET', KEYS[1], 'key_hash')
if stored and stored == ARGV[1] then
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
