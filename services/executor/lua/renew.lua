-- Renew the leases of entries an executor holds: re-claim each (JUSTID, resetting its idle time) only if it
-- is still pending to that executor. KEYS[1]: the partition's log (routing), KEYS[2]: its slot guard (never
-- written, see shared/log/keys.py). ARGV: group, consumer, then pairs (stream, entry id). Returns the entries it no longer holds, as stream, id pairs.
local group, consumer = ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local stream, id = ARGV[i], ARGV[i + 1]
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 1 and p[1][2] == consumer then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
  else
    lost[#lost + 1] = stream
    lost[#lost + 1] = id
  end
end
return lost
