-- After a batch that projected executions' endings committed, give their hashes the retention TTL
-- (services/projector/projector.py). Only a hash still ended gets it: one revived meanwhile (requeued) keeps
-- living.
-- KEYS: execution hashes of one partition whose ending was just projected. ARGV[1]: retention (s), then the
-- ended statuses. Result: how many hashes got the TTL.

local ended = {}
for i = 2, #ARGV do ended[ARGV[i]] = true end
local n = 0
for _, key in ipairs(KEYS) do
  if ended[redis.call('HGET', key, 'status')] then
    redis.call('EXPIRE', key, ARGV[1])
    n = n + 1
  end
end
return n
