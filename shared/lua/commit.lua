-- Apply a batch of atomic units to one partition.
-- KEYS[1] (then, last, the partition's slot guard: never written, see shared/keys.py): the partition's log
-- stream (routes the call to the partition's slot; every key touched carries the same hash tag). ARGV[1]: msgpack list of units; a unit is {guards, ops}.
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

-- Backlogs: one list per level and tenant ('backlog:<level>:<tenant>'); a level's 'ready' sorted set holds the
-- tenants with work there, by virtual time; 'levels' marks the levels with work. An execution id is in at
-- most one backlog, and only while queued and not yet dispatched.
local function push_backlog(prefix, tenant, id, level, front)
  local backlog = prefix .. 'backlog:' .. level .. ':' .. tenant
  local n
  if front then n = redis.call('LPUSH', backlog, id) else n = redis.call('RPUSH', backlog, id) end
  if n == 1 then
    -- A tenant becoming active joins the level at its current virtual time.
    redis.call('ZADD', prefix .. 'ready:' .. level, 'NX', tonumber(redis.call('GET', prefix .. 'vt:' .. level) or '0'),
               tenant)
  end
  redis.call('ZADD', prefix .. 'levels', 'NX', level, level)
  redis.call('XADD', prefix .. 'bell', 'MAXLEN', '1', '*', 'n', '1')
end

-- Remove an id from its backlog at ``level``; true if it was there.
local function unbacklog(prefix, tenant, id, level)
  if not tenant or not level then return false end
  local backlog = prefix .. 'backlog:' .. level .. ':' .. tenant
  if redis.call('LREM', backlog, 1, id) == 0 then return false end
  if redis.call('LLEN', backlog) == 0 then redis.call('ZREM', prefix .. 'ready:' .. level, tenant) end
  return true
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
  elseif kind == 'backlog' then
    -- {backlog, partition prefix, tenant, execution id, level}: queue the id behind the tenant's others.
    push_backlog(op[2], op[3], op[4], op[5], false)
  elseif kind == 'unqueue' then
    -- {unqueue, partition prefix, execution id}: a queued execution leaves the queue (cancelled): its one
    -- backlog entry, or its place on its paused workflow's parked list, is removed now, not skipped later.
    local st = redis.call('HMGET', op[2] .. 'exec:' .. op[3], 'priority', 'tenant', 'workflow_id')
    if not unbacklog(op[2], st[2], op[3], st[1]) then
      redis.call('LREM', op[2] .. 'parked:' .. tostring(st[3]), 1, op[3])
    end
  elseif kind == 'reprioritize' then
    -- {reprioritize, partition prefix, tenant, execution id, old level, new level}: move its backlog entry
    -- to the back of the new level. Parked (its workflow is paused), it stays parked: resume reads the
    -- priority from its state.
    if unbacklog(op[2], op[3], op[4], op[5]) then push_backlog(op[2], op[3], op[4], op[6], false) end
  elseif kind == 'unpark' then
    -- {unpark, parked list, partition prefix}: a resumed (or deleted) workflow's set-aside executions go back
    -- to the front of their tenants' backlogs (they were queued before anything behind them).
    local ids = redis.call('LRANGE', op[2], 0, -1)
    redis.call('DEL', op[2])
    for i = #ids, 1, -1 do
      local st = redis.call('HMGET', op[3] .. 'exec:' .. ids[i], 'status', 'priority', 'tenant')
      if st[1] == 'queued' then push_backlog(op[3], st[3], ids[i], st[2], true) end
    end
    redis.call('XADD', op[3] .. 'bell', 'MAXLEN', '1', '*', 'n', '1')
  elseif kind == 'ring' then
    redis.call('XADD', op[2], 'MAXLEN', '1', '*', 'n', '1')
  elseif kind == 'release' then
    -- {release, partition prefix, execution id, tenant}: the execution's hand-out ends. Its concurrency slot
    -- is freed only if it held one ('owner' is set exactly while it counts as running), so a second release
    -- changes nothing. A tenant set aside for want of room is looked at again by the next dispatch, and
    -- idle executors are woken when the tenant has work waiting.
    if redis.call('HDEL', op[2] .. 'exec:' .. op[3], 'owner') == 1 then
      redis.call('HINCRBY', op[2] .. 'running', op[4], -1)
      redis.call('ZADD', op[2] .. 'blocked', 'XX', 0, op[4])
      if tonumber(redis.call('HGET', op[2] .. 'queued', op[4]) or '0') > 0 then
        redis.call('XADD', op[2] .. 'bell', 'MAXLEN', '1', '*', 'n', '1')
      end
    end
  elseif kind == 'wake' then
    -- {wake, partition prefix, tenant}: the tenant's limits changed (resumed, new plan): look at it again.
    redis.call('ZADD', op[2] .. 'blocked', 'XX', 0, op[3])
    redis.call('XADD', op[2] .. 'bell', 'MAXLEN', '1', '*', 'n', '1')
  elseif kind == 'unwork' then
    -- {unwork, partition prefix, execution id, group}: take its work entry back (ack and delete), if it has
    -- one, and forget any retry it was waiting for.
    local key = op[2] .. 'exec:' .. op[3]
    local where = redis.call('HMGET', key, 'work_stream', 'work_id')
    if where[1] and where[2] then
      redis.call('XACK', where[1], op[4], where[2])
      redis.call('XDEL', where[1], where[2])
      redis.call('HDEL', key, 'work_stream', 'work_id')
    end
    redis.call('ZREM', op[2] .. 'due', op[3])
  elseif kind == 'untask' then
    -- {untask, partition prefix, execution id}: the execution's robot task (a 'runs_on' step offered or
    -- claimed, see shared/robot_tasks.py), if it has one, ends: it leaves its pool's offers and the lease
    -- scan, its robot no longer shows it, and the execution is no longer parked on it.
    local key = op[2] .. 'exec:' .. op[3]
    local task_id = redis.call('HGET', key, 'task')
    if task_id then
      local task_key = op[2] .. 'task:' .. task_id
      local t = redis.call('HMGET', task_key, 'tenant', 'pool', 'robot')
      if t[1] and t[2] then redis.call('ZREM', op[2] .. 'offers:' .. t[1] .. ':' .. t[2], task_id) end
      redis.call('ZREM', op[2] .. 'task_leases', task_id)
      if t[3] and redis.call('HGET', op[2] .. 'robot:' .. t[3], 'task') == task_id then
        redis.call('HDEL', op[2] .. 'robot:' .. t[3], 'task')
      end
      redis.call('DEL', task_key)
      redis.call('HDEL', key, 'task')
    end
    redis.call('HDEL', key, 'parked')
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
  elseif kind == 'xclaim' then
    redis.call('XCLAIM', op[2], op[3], op[4], 0, op[5], 'JUSTID')
  elseif kind == 'set' then
    if op[4] > 0 then redis.call('SET', op[2], op[3], 'EX', op[4]) else redis.call('SET', op[2], op[3]) end
  elseif kind == 'incrby' then
    redis.call('INCRBY', op[2], op[3])
    -- Set the TTL only the first time (EXPIRE's NX flag needs Redis 7; the embedded fallback is 6.2).
    if op[4] > 0 and redis.call('TTL', op[2]) == -1 then redis.call('EXPIRE', op[2], op[4]) end
  elseif kind == 'del' then
    redis.call('DEL', op[2])
  elseif kind == 'persist' then
    redis.call('PERSIST', op[2])
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
