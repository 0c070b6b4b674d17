-- Execution scheduling ops of commit.lua (loaded into it by shared/domain/commit_script.py; built by
-- shared/domain/executions/ops.py): backlogs, parking, concurrency slots, work entries and robot tasks of executions.
-- Each registers in OPS, declared by commit.lua: OPS[kind](op, ids), op with its binary arguments resolved (these
-- ops return no ids, so they take op only).

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

OPS['backlog'] = function(op)
  -- {backlog, partition prefix, tenant, execution id, level}: queue the id behind the tenant's others.
  push_backlog(op[2], op[3], op[4], op[5], false)
end

OPS['unqueue'] = function(op)
  -- {unqueue, partition prefix, execution id}: a queued execution leaves the queue (cancelled): its one
  -- backlog entry, or its place on its paused workflow's parked list, is removed now, not skipped later.
  local st = redis.call('HMGET', op[2] .. 'exec:' .. op[3], 'priority', 'tenant', 'workflow_id')
  if not unbacklog(op[2], st[2], op[3], st[1]) then
    redis.call('LREM', op[2] .. 'parked:' .. tostring(st[3]), 1, op[3])
  end
end

OPS['reprioritize'] = function(op)
  -- {reprioritize, partition prefix, tenant, execution id, old level, new level}: move its backlog entry
  -- to the back of the new level. Parked (its workflow is paused), it stays parked: resume reads the
  -- priority from its state.
  if unbacklog(op[2], op[3], op[4], op[5]) then push_backlog(op[2], op[3], op[4], op[6], false) end
end

OPS['unpark'] = function(op)
  -- {unpark, parked list, partition prefix}: a resumed (or deleted) workflow's set-aside executions go back
  -- to the front of their tenants' backlogs (they were queued before anything behind them).
  local ids = redis.call('LRANGE', op[2], 0, -1)
  redis.call('DEL', op[2])
  for i = #ids, 1, -1 do
    local st = redis.call('HMGET', op[3] .. 'exec:' .. ids[i], 'status', 'priority', 'tenant')
    if st[1] == 'queued' then push_backlog(op[3], st[3], ids[i], st[2], true) end
  end
  redis.call('XADD', op[3] .. 'bell', 'MAXLEN', '1', '*', 'n', '1')
end

OPS['release'] = function(op)
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
end

OPS['wake'] = function(op)
  -- {wake, partition prefix, tenant}: the tenant's limits changed (resumed, new plan): look at it again.
  redis.call('ZADD', op[2] .. 'blocked', 'XX', 0, op[3])
  redis.call('XADD', op[2] .. 'bell', 'MAXLEN', '1', '*', 'n', '1')
end

OPS['unwork'] = function(op)
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
end

OPS['untask'] = function(op)
  -- {untask, partition prefix, execution id}: the execution's robot task (a 'runs_on' step offered or
  -- claimed, see shared/domain/robots/tasks.py), if it has one, ends: it leaves its pool's offers and the lease
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
end
