-- Hand executions of one partition to an executor and load what it needs to run them, in one call.
-- KEYS[1..10]: the partition's work streams, priority 1 (highest) first; KEYS[11]: the partition's slot guard
-- (never written: shared/log/keys.py slot_guard_of).
-- ARGV: mode, group, consumer, count, partition key prefix ('orq:{p}:'), min idle ms (mode 'expired'),
--       now ms, plans (msgpack map: plan name -> {max concurrent, rate per window, weight}; 0 = no limit),
--       rate window ms (60000: rates are per minute).
--
-- Every hand-out moves the execution's fencing token ('fence') on and records the executor as 'owner'.
-- The executor's commits all require the token it was handed, so an executor that lost the execution (to a
-- takeover, a cancel, a new series of attempts) can change nothing. 'owner' is set exactly while the
-- execution counts in the tenant's 'running' counter: a hand-out that sets it adds one, the release that
-- clears it takes one away.
--
-- Modes:
--   next    - from the backlogs, lowest-numbered level first; within a level, tenants are served by
--             weighted fair share (stride scheduling on the level's 'ready' sorted set: the tenant with the
--             lowest virtual time takes up to QUANTUM, then its virtual time advances by taken/weight). A
--             tenant that is paused, at its concurrency limit or at its rate per window leaves the ready set
--             for the 'blocked' set until it may have room again (its work waits, it is never dropped).
--             Each execution taken gets a work entry, delivered to this consumer at once.
--             (The tenant's 'queued' count drops when the executor's start commit moves it to running.)
--             An execution of a paused workflow is set aside on the workflow's 'parked' list until resumed.
--   due     - executions waiting to retry whose time has come (the 'due' sorted set, by due time), and parked
--             ones ready to go on ('parked' = 'resume': their robot step or child execution ended), whose
--             tenant has room; their entries move from the 'backoff' (or 'parked') consumer to this one.
--   expired - entries of consumers idle past the lease (their executor died, or handed them over on
--             shutdown, or lost them to a dropped connection - this consumer's own orphans included: an entry
--             this executor still holds is renewed every lease/3, so one idle past the lease is not held).
-- Result: list of {key index, entry id, execution id, flat execution hash, pinned definition ('' when an
-- earlier item of the reply carries it), previous owner}.

local LEVELS = #KEYS - 1  -- the work streams: every key but the slot guard
local mode, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local want = tonumber(ARGV[4])
local prefix = ARGV[5]
local min_idle = tonumber(ARGV[6])
local now = tonumber(ARGV[7])
local window = tonumber(ARGV[9])
local minute = math.floor(now / window)
local plans = cmsgpack.unpack(ARGV[8])
local exec_prefix = prefix .. 'exec:'
local running_key = prefix .. 'running'
local blocked_key = prefix .. 'blocked'
local due_key = prefix .. 'due'
-- Up to QUANTUM executions of one tenant per pick: the pick's fixed costs (ready set, limits, backlog
-- length) are shared by several executions, and the tenant's virtual time advances by taken / weight, so
-- long-run shares are exact and a tenant runs ahead of its share by at most QUANTUM - 1 executions.
local QUANTUM = 4
-- A tenant blocked by its concurrency limit is looked at again when one of its executions ends (the release
-- sets its time to 0), and at the latest after this long (a plan change raised the limit, say).
local RECHECK_MS = 2000
-- Due retries looked at per call beyond those wanted: retries of tenants without room are put back by
-- RECHECK_MS, so they cannot hide the ones behind them.
local DUE_SLACK = 32
local out = {}

-- A definition goes into the reply once: later executions pinned to the same version get '' and the executor
-- takes it from the earlier one.
local sent_defs = {}
local function load(k, entry_id, exec_id, previous)
  local state = redis.call('HGETALL', exec_prefix .. exec_id)
  local def = false
  for i = 1, #state, 2 do
    if state[i] == 'def_key' and not sent_defs[state[i + 1]] then
      def = redis.call('GET', state[i + 1])
      sent_defs[state[i + 1]] = true
    end
  end
  out[#out + 1] = {k, entry_id, exec_id, state, def or '', previous}
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function key_index(stream)
  for k = 1, LEVELS do
    if KEYS[k] == stream then return k end
  end
  return nil
end

local limits_of = {}
local function limits(tenant)
  local l = limits_of[tenant]
  if l then return l end
  local h = redis.call('HMGET', prefix .. 'tenant:' .. tenant, 'plan', 'paused')
  local plan = plans[h[1]] or plans['']  -- '': the fallback for a plan this executor does not know
  l = {paused = h[2] == '1', concurrent = plan[1], rate = plan[2], weight = plan[3]}
  if l.concurrent > 0 then l.running = tonumber(redis.call('HGET', running_key, tenant) or '0') end
  if l.rate > 0 then l.rate_used = tonumber(redis.call('GET', prefix .. 'rate:' .. tenant .. ':' .. minute) or '0') end
  l.started = 0
  limits_of[tenant] = l
  return l
end

-- When a tenant without room may have some again (ms), or nil when it has room now.
local function no_room_until(tenant)
  local l = limits(tenant)
  if l.paused then return now + RECHECK_MS end
  if l.rate > 0 and l.rate_used + l.started >= l.rate then return (minute + 1) * window end
  if l.concurrent > 0 and l.running + l.started >= l.concurrent then return now + RECHECK_MS end
  return nil
end

-- How many executions a tenant may still start under its limits (at least 1 once it has room).
local function room(l)
  local n = math.huge
  if l.concurrent > 0 then n = math.min(n, l.concurrent - l.running - l.started) end
  if l.rate > 0 then n = math.min(n, l.rate - l.rate_used - l.started) end
  return n
end

-- The execution is now this consumer's: a new fencing token, and a running slot unless it holds one already
-- (a takeover keeps the slot its dead executor held).
local function hand_out(exec_key, tenant, holds_slot)
  redis.call('HINCRBY', exec_key, 'fence', 1)
  redis.call('HSET', exec_key, 'owner', consumer)
  if not holds_slot then
    local l = limits(tenant)
    l.started = l.started + 1
  end
end

-- An entry nothing should run any more (its execution ended, was cancelled, or moved on): drop it.
local function drop_entry(stream, id)
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end

local paused_workflows = {}
local function workflow_paused(workflow_id)
  local paused = paused_workflows[workflow_id]
  if paused == nil then
    paused = redis.call('HGET', prefix .. 'wf:' .. workflow_id, 'paused') == '1'
    paused_workflows[workflow_id] = paused
  end
  return paused
end

-- Counters are kept in Lua while the call runs and written once per tenant at the end.
local function flush_counts()
  for tenant, l in pairs(limits_of) do
    if l.started > 0 then
      redis.call('HINCRBY', running_key, tenant, l.started)
      -- Only dispatch reads the window counter, so tenants without a rate limit keep none.
      if l.rate > 0 then
        local rk = prefix .. 'rate:' .. tenant .. ':' .. minute
        redis.call('INCRBY', rk, l.started)
        redis.call('EXPIRE', rk, math.ceil(2 * window / 1000))
      end
    end
  end
end

-- Blocked tenants whose time has come go back to the ready set of every level where they have work, at the
-- level's current virtual time (like a newcomer).
local function unblock_due()
  local due = redis.call('ZRANGEBYSCORE', blocked_key, '-inf', now, 'LIMIT', 0, 64)
  for _, tenant in ipairs(due) do
    redis.call('ZREM', blocked_key, tenant)
    for k = 1, LEVELS do
      if redis.call('EXISTS', prefix .. 'backlog:' .. k .. ':' .. tenant) == 1 then
        local vt = tonumber(redis.call('GET', prefix .. 'vt:' .. k) or '0')
        redis.call('ZADD', prefix .. 'ready:' .. k, 'NX', vt, tenant)
        redis.call('ZADD', prefix .. 'levels', 'NX', k, k)
      end
    end
  end
end

-- The tenant to serve next at a level: the lowest virtual time with room. Tenants without room met on the
-- way leave the ready set for the blocked set, so each is passed over once, not at every call.
local function pick(ready)
  while true do
    local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if #first == 0 then return nil end
    local until_ms = no_room_until(first[1])
    if not until_ms then return first[1], tonumber(first[2]) end
    redis.call('ZREM', ready, first[1])
    redis.call('ZADD', blocked_key, 'LT', until_ms, first[1])
  end
end

if mode == 'next' then
  unblock_due()
  for k = 1, LEVELS do
    if want <= 0 then break end
    local ready = prefix .. 'ready:' .. k
    local taken = {}
    local served = nil
    local guard = 0
    while want > 0 and guard < 4 * want + 16 do
      guard = guard + 1
      local tenant, score = pick(ready)
      if not tenant then break end
      local backlog = prefix .. 'backlog:' .. k .. ':' .. tenant
      local l = limits(tenant)
      local asked = math.min(QUANTUM, want, room(l))
      local ids = redis.call('LPOP', backlog, asked) or {}
      local got = 0
      for _, id in ipairs(ids) do
        local exec_key = exec_prefix .. id
        local st = redis.call('HMGET', exec_key, 'status', 'priority', 'workflow_id', 'work_id')
        -- A backlog holds an id only while it is queued there and not dispatched; checked all the same.
        local live = st[1] == 'queued' and tonumber(st[2]) == k and not st[4]
        if live and workflow_paused(st[3]) then
          redis.call('RPUSH', prefix .. 'parked:' .. st[3], id)
          live = false
        end
        if live then
          local entry_id = redis.call('XADD', KEYS[k], '*', 'e', id, 'tenant', tenant)
          redis.call('HSET', exec_key, 'work_stream', KEYS[k], 'work_id', entry_id)
          hand_out(exec_key, tenant, false)
          taken[#taken + 1] = {entry_id, id}
          got = got + 1
        end
      end
      if got > 0 then
        want = want - got
        served = score
      end
      -- A short pop emptied the backlog; a full one may have too.
      if #ids < asked or redis.call('LLEN', backlog) == 0 then
        redis.call('ZREM', ready, tenant)
      elseif got > 0 then
        redis.call('ZADD', ready, 'XX', score + got / l.weight, tenant)
      end
    end
    -- The level has no work left unless a tenant is ready there (blocked tenants bring it back when they
    -- return; while any is blocked the level stays, so executors keep calling and the tenant returns on time).
    if redis.call('ZCARD', ready) == 0 and redis.call('ZCARD', blocked_key) == 0 then
      redis.call('ZREM', prefix .. 'levels', k)
    end
    if #taken > 0 then
      -- Only this call adds entries, and it delivers them at once: the new ones are all there is to read.
      redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', #taken, 'STREAMS', KEYS[k], '>')
      redis.call('SET', prefix .. 'vt:' .. k, served)
      for _, t in ipairs(taken) do load(k, t[1], t[2], '') end
    end
  end
  flush_counts()
elseif mode == 'due' then
  local due = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, want + DUE_SLACK)
  for _, exec_id in ipairs(due) do
    if want <= 0 then break end
    local exec_key = exec_prefix .. exec_id
    local st = redis.call('HMGET', exec_key, 'status', 'tenant', 'work_stream', 'work_id', 'parked')
    local k = st[3] and key_index(st[3])
    -- A retry, or a parked execution whose robot step or child ended (it goes on with its next step).
    local resuming = st[1] == 'running' and st[5] == 'resume'
    if (st[1] ~= 'retrying' and not resuming) or not k or not st[4] then
      redis.call('ZREM', due_key, exec_id)  -- cancelled or retried by hand meanwhile: nothing to resume
    else
      local until_ms = no_room_until(st[2])
      if until_ms then
        redis.call('ZADD', due_key, 'XX', math.max(until_ms, now + 1), exec_id)
      else
        redis.call('ZREM', due_key, exec_id)
        local claimed = redis.call('XCLAIM', KEYS[k], group, consumer, 0, st[4], 'JUSTID')
        if #claimed > 0 then
          hand_out(exec_key, st[2], false)
          load(k, st[4], exec_id, resuming and 'parked' or 'backoff')
          want = want - 1
        end
      end
    end
  end
  flush_counts()
elseif mode == 'expired' then
  for k = 1, LEVELS do
    if want <= 0 then break end
    -- Per consumer, so parked retries (the 'backoff' consumer's entries are idle by design) never fill the
    -- page that expired entries are looked for in.
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[k], group)) do
      if want <= 0 then break end
      local name, pending = field(c, 'name'), field(c, 'pending')
      if pending > 0 and name ~= 'backoff' and name ~= 'parked' then
        local idle = redis.call('XPENDING', KEYS[k], group, 'IDLE', min_idle, '-', '+', want, name)
        for _, p in ipairs(idle) do
          local claimed = redis.call('XCLAIM', KEYS[k], group, consumer, min_idle, p[1])
          if #claimed > 0 and claimed[1] then
            local exec_id = field(claimed[1][2], 'e')
            local exec_key = exec_prefix .. exec_id
            local st = redis.call('HMGET', exec_key, 'status', 'tenant', 'work_id', 'owner')
            -- Queued or retrying with a hand-out in progress (its executor died before the start commit),
            -- or running: the entry is the execution's live one.
            if (st[1] == 'queued' or st[1] == 'running' or st[1] == 'retrying') and st[3] == p[1] then
              hand_out(exec_key, st[2], st[4] ~= false)
              load(k, p[1], exec_id, name)
              want = want - 1
            else
              drop_entry(KEYS[k], p[1])  -- its execution moved on without it (state from before fencing)
            end
          elseif #claimed > 0 then
            redis.call('XACK', KEYS[k], group, p[1])  -- deleted entry: nothing left to run
          end
        end
      end
    end
  end
  flush_counts()
end
return out
