-- A robot takes the first task offered to its pool (shared/domain/robots/tasks.py).
-- KEYS[1]: the partition's log, KEYS[2]: its slot guard (never written, see shared/log/keys.py).
-- ARGV: partition key prefix ('orq:{p}:'), tenant, pool, robot id, now ms,
-- lease ms, template 'step.claimed' event (msgpack; aggregate_id, step_index, task_id and attempt are set here).
-- The offers sorted set is scored by priority, then offer time: its first member is the task to take. A task
-- is offered only while its execution is parked on it ('task' on the execution); anything else met on the way
-- is a leftover and is dropped.
-- Result: {} when nothing is offered, else {task id, execution id, step index, attempt, action, label, params
-- (msgpack), lease until ms}.

local prefix, tenant, pool, robot = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
local offers = prefix .. 'offers:' .. tenant .. ':' .. pool

while true do
  local first = redis.call('ZPOPMIN', offers)
  if #first == 0 then return {} end
  local task_id = first[1]
  local task_key = prefix .. 'task:' .. task_id
  local t = redis.call('HMGET', task_key, 'execution_id', 'step_index', 'attempt', 'action', 'label', 'params',
                       'robot')
  local live = false
  if t[1] and not t[7] then
    local e = redis.call('HMGET', prefix .. 'exec:' .. t[1], 'status', 'task')
    live = e[1] == 'running' and e[2] == task_id
  end
  if live then
    local until_ms = now + lease
    redis.call('HSET', task_key, 'robot', robot, 'claimed_at', now, 'lease_until', until_ms)
    redis.call('ZADD', prefix .. 'task_leases', until_ms, task_id)
    redis.call('HSET', prefix .. 'robot:' .. robot, 'task', task_id, 'last_seen', now)
    local event = cmsgpack.unpack(ARGV[7])
    event['aggregate_id'] = t[1]
    event['step_index'] = tonumber(t[2])
    event['task_id'] = task_id
    event['attempt'] = tonumber(t[3])
    redis.call('XADD', KEYS[1], '*', 't', 'step.claimed', 'd', cmsgpack.pack(event))
    return {task_id, t[1], t[2], t[3], t[4], t[5] or '', t[6], until_ms}
  elseif not t[7] then
    redis.call('DEL', task_key)
  end
end
