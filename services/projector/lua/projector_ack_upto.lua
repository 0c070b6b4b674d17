-- Not a script on its own: the function ack_upto, put in front of projector_read.lua and projector_ack.lua
-- when they are loaded (services/projector/locks.py). It acks the consumer's pending entries up to an id
-- (those are applied), so the ids never travel over the wire; '' acks nothing.

local function ack_upto(stream, group, consumer, upto)
  if upto == '' then return end
  while true do
    local pending = redis.call('XPENDING', stream, group, '-', upto, 1000, consumer)
    if #pending == 0 then return end
    local ids = {}
    for i, entry in ipairs(pending) do ids[i] = entry[1] end
    redis.call('XACK', stream, group, unpack(ids))
    if #pending < 1000 then return end
  end
end
