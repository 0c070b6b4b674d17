-- Apply a batch of atomic units to one partition.
-- KEYS[1]: the partition's log stream (routes the call to the partition's slot; every key touched carries
-- the same hash tag). ARGV[1]: msgpack list of units; a unit is {guards, ops}.
-- Each unit either applies all its ops or none (a failed guard skips it); one unit's failure never
-- affects another. Result per unit: {1, log ids...} | {0, label, actual} | {2, stored idempotent reply}.

local units = cmsgpack.unpack(ARGV[1])
local results = {}

local function check(g)
  local kind = g[1]
  if kind == 'in' then
    local cur = redis.call('HGET', g[2], g[3])
    if not cur then cur = '' end
    for i = 5, #g do
      if g[i] == cur then return nil end
    end
    return {0, g[4], cur}
  elseif kind == 'absent' then
    if redis.call('EXISTS', g[2]) == 1 then return {0, g[3], ''} end
  elseif kind == 'exists' then
    if redis.call('EXISTS', g[2]) == 0 then return {0, g[3], ''} end
  elseif kind == 'idem' then
    local stored = redis.call('GET', g[2])
    if stored then return {2, stored} end
  elseif kind == 'hlimit' then
    -- {hlimit, key, field, amount, limit, label}: the counter in a hash field plus amount must not pass limit.
    local used = tonumber(redis.call('HGET', g[2], g[3]) or '0')
    if g[5] > 0 and used + g[4] > g[5] then return {0, g[6], tostring(used)} end
  elseif kind == 'quota' then
    local used = tonumber(redis.call('GET', g[2]) or '0')
    if g[4] > 0 and used + g[3] > g[4] then return {0, g[5], tostring(used)} end
  end
  return nil
end

local function xadd_fields(stream, fields, from)
  local args = {'XADD', stream, '*'}
  for i = from, #fields do args[#args + 1] = fields[i] end
  return redis.call(unpack(args))
end

local function apply(op, ids, base)
  for i = 2, #op do
    if type(op[i]) == 'table' then op[i] = ARGV[base + op[i][1]] end
  end
  local kind = op[1]
  if kind == 'log' then
    ids[#ids + 1] = redis.call('XADD', op[2], '*', 't', op[3], 'd', op[4])
  elseif kind == 'hset' then
    redis.call('HSET', unpack(op, 2))
  elseif kind == 'hsetnx' then
    redis.call('HSETNX', op[2], op[3], op[4])
  elseif kind == 'hincrby' then
    redis.call('HINCRBY', op[2], op[3], op[4])
  elseif kind == 'hdel' then
    redis.call('HDEL', unpack(op, 2))
  elseif kind == 'work' then
    -- {work, stream, state key, field, value, ...}: enqueue and remember where, so it can be taken back.
    local id = xadd_fields(op[2], op, 4)
    redis.call('HSET', op[3], 'work_stream', op[2], 'work_id', id)
  elseif kind == 'backlog' then
    -- {backlog, ready zset, backlog list, level virtual-time key, bell stream, tenant, execution id, levels
    -- zset, level}: queue the id behind the tenant's others; a tenant becoming active joins the level at its
    -- virtual time; the level is marked as having work (executors look there first).
    if redis.call('RPUSH', op[3], op[7]) == 1 then
      redis.call('ZADD', op[2], 'NX', tonumber(redis.call('GET', op[4]) or '0'), op[6])
    end
    redis.call('ZADD', op[8], 'NX', op[9], op[9])
    redis.call('XADD', op[5], 'MAXLEN', '1', '*', 'n', '1')
  elseif kind == 'unpark' then
    -- {unpark, parked list, partition prefix}: a resumed workflow's set-aside executions go back to the front
    -- of their tenants' backlogs (they were queued before anything behind them), and executors are woken.
    local ids = redis.call('LRANGE', op[2], 0, -1)
    redis.call('DEL', op[2])
    for i = #ids, 1, -1 do
      local st = redis.call('HMGET', op[3] .. 'exec:' .. ids[i], 'status', 'priority', 'tenant')
      if st[1] == 'queued' then
        local level = st[2]
        if redis.call('LPUSH', op[3] .. 'backlog:' .. level .. ':' .. st[3], ids[i]) == 1 then
          local vt = tonumber(redis.call('GET', op[3] .. 'vt:' .. level) or '0')
          redis.call('ZADD', op[3] .. 'ready:' .. level, 'NX', vt, st[3])
        end
        redis.call('ZADD', op[3] .. 'levels', 'NX', level, level)
      end
    end
    redis.call('XADD', op[3] .. 'bell', 'MAXLEN', '1', '*', 'n', '1')
  elseif kind == 'ring' then
    redis.call('XADD', op[2], 'MAXLEN', '1', '*', 'n', '1')
  elseif kind == 'release' then
    -- {release, running hash, queued hash, bell stream, tenant}: an execution stopped running here; if the
    -- tenant has work waiting (perhaps held back by its concurrency limit), wake the executors.
    redis.call('HINCRBY', op[2], op[5], -1)
    if tonumber(redis.call('HGET', op[3], op[5]) or '0') > 0 then
      redis.call('XADD', op[4], 'MAXLEN', '1', '*', 'n', '1')
    end
  elseif kind == 'unwork' then
    -- {unwork, state key, group}: take the recorded work entry back (ack and delete), if any.
    local where = redis.call('HMGET', op[2], 'work_stream', 'work_id')
    if where[1] and where[2] then
      redis.call('XACK', where[1], op[3], where[2])
      redis.call('XDEL', where[1], where[2])
      redis.call('HDEL', op[2], 'work_stream', 'work_id')
    end
  elseif kind == 'xadd' then
    -- {xadd, stream, ref key or '', ref field, field, value, ...}
    local id = xadd_fields(op[2], op, 5)
    if op[3] ~= '' then redis.call('HSET', op[3], op[4], id) end
  elseif kind == 'xdel_ref' then
    -- {xdel_ref, stream, hash key, field}: delete the entry whose id the hash recorded, and forget it.
    local id = redis.call('HGET', op[3], op[4])
    if id then
      redis.call('XDEL', op[2], id)
      redis.call('HDEL', op[3], op[4])
    end
  elseif kind == 'xack' then
    redis.call('XACK', op[2], op[3], op[4])
    if op[5] == 1 then redis.call('XDEL', op[2], op[4]) end
  elseif kind == 'xdel' then
    redis.call('XDEL', op[2], op[3])
  elseif kind == 'xclaim' then
    redis.call('XCLAIM', op[2], op[3], op[4], 0, op[5], 'JUSTID')
  elseif kind == 'set' then
    if op[4] > 0 then redis.call('SET', op[2], op[3], 'EX', op[4]) else redis.call('SET', op[2], op[3]) end
  elseif kind == 'incrby' then
    redis.call('INCRBY', op[2], op[3])
    if op[4] > 0 then redis.call('EXPIRE', op[2], op[4], 'NX') end
  elseif kind == 'sadd' then
    redis.call('SADD', op[2], op[3])
  elseif kind == 'srem' then
    redis.call('SREM', op[2], op[3])
  elseif kind == 'del' then
    redis.call('DEL', op[2])
  elseif kind == 'publish' then
    redis.call('PUBLISH', op[2], op[3])
  elseif kind == 'zadd' then
    redis.call('ZADD', op[2], op[3], op[4])
  elseif kind == 'zrem' then
    redis.call('ZREM', op[2], unpack(op, 3))
  elseif kind == 'qadd' then
    -- {qadd, log, type, ready zset, deferred zset, refs hash, item key prefix, tenant, queue id, now, then per
    --  item: id, event, snapshot, data, rank, defer_until (0: none), reference ('': none)}: add work-queue
    -- items (see shared/queues_items.py); one op for a whole bulk keeps 10,000 items to a few calls each.
    local now = op[10]
    for i = 11, #op, 7 do
      local id, rank, defer, ref = op[i], op[i + 4], op[i + 5], op[i + 6]
      ids[#ids + 1] = redis.call('XADD', op[2], '*', 't', op[3], 'd', op[i + 1])
      redis.call('HSET', op[7] .. id, 'tenant', op[8], 'queue_id', op[9], 'status', 'new', 'snap', op[i + 2],
                 'data', op[i + 3], 'rank', rank)
      if defer > now then redis.call('ZADD', op[5], defer, rank) else redis.call('ZADD', op[4], 0, rank) end
      if ref ~= '' then redis.call('HSETNX', op[6], ref, id) end
    end
  elseif kind == 'qclaim' then
    -- {qclaim, ready zset, deferred zset, now, item key prefix, due zset, abandon after ms, log, type, template,
    --  claimer}: claim the first item of a work queue (see shared/queues_claims.py). Deferred ranks due by now
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
  else
    error('unknown op ' .. tostring(kind))
  end
end

for u = 1, #units do
  local unit = units[u]
  local failed = nil
  for _, g in ipairs(unit[1]) do
    failed = check(g)
    if failed then break end
  end
  if failed then
    results[u] = failed
  else
    local ids = {1}
    for _, op in ipairs(unit[2]) do apply(op, ids, unit[3]) end
    results[u] = ids
  end
end
return results
