-- One fenced batch read of a partition's log by a projector (services/projector/locks.py); loaded after
-- projector_ack_upto.lua. Acks what the previous batch applied, then reads the consumer's own pending entries
-- first (left by a failed batch or a take-over), else new ones.
-- KEYS[1]: the partition's projector lock, KEYS[2]: the partition's log. ARGV: token, TTL ms, group, consumer,
-- count, ack up to ('' for none).
-- Result: -1 when the lock is not the caller's (nothing acked or read), {1, entries}, or {0, last id of the
-- stream} when there is nothing to read.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
ack_upto(KEYS[2], ARGV[3], ARGV[4], ARGV[6])
local r = redis.call('XREADGROUP', 'GROUP', ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'STREAMS', KEYS[2], '0')
if r and #r[1][2] > 0 then return {1, r[1][2]} end
r = redis.call('XREADGROUP', 'GROUP', ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'STREAMS', KEYS[2], '>')
if r and #r[1][2] > 0 then return {1, r[1][2]} end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then return {0, last[1][1]} end
return {0, '0-0'}
