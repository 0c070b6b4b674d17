-- Hand entries an executor holds over to the others at once (graceful shutdown): each is moved to the
-- pseudo-consumer 'released' with an idle time of a whole lease, so the next executor looking for expired
-- entries takes it now rather than after the lease. Entries no longer pending to the caller are skipped.
-- KEYS[1]: the partition's bell (rung so idle executors look), KEYS[2]: its slot guard (never written). ARGV: group, consumer, lease ms, then pairs
-- (stream, entry id).
local group, consumer, lease = ARGV[1], ARGV[2], ARGV[3]
local moved = 0
for i = 4, #ARGV, 2 do
  local stream, id = ARGV[i], ARGV[i + 1]
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 1 and p[1][2] == consumer then
    redis.call('XCLAIM', stream, group, 'released', 0, id, 'IDLE', lease, 'JUSTID')
    moved = moved + 1
  end
end
if moved > 0 then redis.call('XADD', KEYS[1], 'MAXLEN', '1', '*', 'n', '1') end
return moved
