-- Work-queue item ops of commit.lua (loaded into it by shared/domain/commit_script.py; built by shared/domain/queues/items.py
-- and shared/domain/queues/claims.py). Each registers in OPS, declared by commit.lua: OPS[kind](op, ids), op with its
-- binary arguments resolved; ids collects the unit's result ids.

OPS['qadd'] = function(op, ids)
  -- {qadd, log, type, ready zset, deferred zset, refs hash, item key prefix, tenant, queue id, now, then per
  --  item: id, event, snapshot, data, rank, defer_until (0: none), reference ('': none)}: add work-queue
  -- items (see shared/domain/queues/items.py); one op for a whole bulk keeps 10,000 items to a few calls each.
  local now = op[10]
  for i = 11, #op, 7 do
    local id, rank, defer, ref = op[i], op[i + 4], op[i + 5], op[i + 6]
    ids[#ids + 1] = redis.call('XADD', op[2], '*', 't', op[3], 'd', op[i + 1])
    redis.call('HSET', op[7] .. id, 'tenant', op[8], 'queue_id', op[9], 'status', 'new', 'snap', op[i + 2],
               'data', op[i + 3], 'rank', rank)
    if defer > now then redis.call('ZADD', op[5], defer, rank) else redis.call('ZADD', op[4], 0, rank) end
    if ref ~= '' then redis.call('HSETNX', op[6], ref, id) end
  end
end

OPS['qclaim'] = function(op, ids)
  -- {qclaim, ready zset, deferred zset, now, item key prefix, due zset, abandon after ms, log, type, template,
  --  claimer}: claim the first item of a work queue (see shared/domain/queues/claims.py). Deferred ranks due by now
  -- join the ready set first; the ready set's scores are all 0, so its first member is the lowest rank, and a
  -- rank ends with ':<item id>'. The item's msgpack snapshot ('snap') becomes in_progress, the template event
  -- gets it as 'item' and the id as 'aggregate_id'. ids gets the event's log id, then the item id; with
  -- nothing ready, nothing changes.
  local now = op[4]
  local due = redis.call('ZRANGEBYSCORE', op[3], '-inf', now, 'LIMIT', 0, 1000)
  for _, rank in ipairs(due) do
    redis.call('ZADD', op[2], 0, rank)
    redis.call('ZREM', op[3], rank)
  end
  while true do
    local first = redis.call('ZRANGE', op[2], 0, 0)[1]
    if not first then break end
    redis.call('ZREM', op[2], first)
    local id = string.match(first, ':([^:]+)$')
    local key = op[5] .. id
    local item = redis.call('HMGET', key, 'status', 'snap')
    if item[1] == 'new' and item[2] then  -- anything else is a stale rank: dropped, try the next
      local snap = cmsgpack.unpack(item[2])
      snap['status'] = 'in_progress'
      snap['started_at'] = now
      snap['processed_by'] = op[11]
      redis.call('HSET', key, 'status', 'in_progress', 'started_at', now, 'snap', cmsgpack.pack(snap))
      redis.call('ZADD', op[6], now + op[7], id)
      local event = cmsgpack.unpack(op[10])
      event['aggregate_id'] = id
      event['item'] = snap
      ids[#ids + 1] = redis.call('XADD', op[8], '*', 't', op[9], 'd', cmsgpack.pack(event))
      ids[#ids + 1] = id
      break
    end
  end
end
