-- Hand executions of one partition to an executor and load what it needs to run them, in one call.
-- KEYS[1..10]: the partition's work streams, priority 1 (highest) first.
-- ARGV: mode, group, consumer, count, partition key prefix ('orq:{p}:'), min idle ms (mode 'expired'),
--       now ms, plans (msgpack map: plan name -> {max concurrent, rate per window, weight}; 0 = no limit),
--       rate window ms (60000: rates are per minute).
-- Modes:
--   next    - from the backlogs, lowest-numbered level first; within a level, tenants are served by
--             weighted fair share (stride scheduling on the level's 'ready' sorted set: the tenant with the
--             lowest virtual time takes up to QUANTUM, then its virtual time advances by taken/weight). A
--             tenant that is paused, at its concurrency limit or at its rate per minute is skipped (its work
--             waits, it is never dropped). Each execution taken gets a work entry, delivered to this
--             consumer at once.
--             (The tenant's 'queued' count drops when the executor's start commit moves it to running.)
--             An execution of a paused workflow is set aside on the workflow's 'parked' list until resumed.
--   due     - entries parked on the 'backoff' consumer whose idle time reached their retry delay (and whose
--             tenant has room).
--   expired - entries of other consumers idle past the lease (their executor died).
-- Result: list of {key index, entry id, execution id, flat execution hash, pinned definition ('' when an
-- earlier item of the reply carries it), previous owner}.

local mode, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local want = tonumber(ARGV[4])
local prefix = ARGV[5]
local min_idle = tonumber(ARGV[6])
local minute = math.floor(tonumber(ARGV[7]) / tonumber(ARGV[9]))
local plans = cmsgpack.unpack(ARGV[8])
local exec_prefix = prefix .. 'exec:'
local running_key = prefix .. 'running'
local SCAN = 16
-- Up to QUANTUM executions of one tenant per pick: the pick's fixed costs (ready set, limits, backlog
-- length) are shared by several executions, and the tenant's virtual time advances by taken / weight, so
-- long-run shares are exact and a tenant runs ahead of its share by at most QUANTUM - 1 executions.
local QUANTUM = 4
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

local function has_room(tenant)
  local l = limits(tenant)
  if l.paused then return false end
  if l.concurrent > 0 and l.running + l.started >= l.concurrent then return false end
  if l.rate > 0 and l.rate_used + l.started >= l.rate then return false end
  return true
end

-- How many executions a tenant may still start under its limits (at least 1 once has_room said yes).
local function room(l)
  local n = math.huge
  if l.concurrent > 0 then n = math.min(n, l.concurrent - l.running - l.started) end
  if l.rate > 0 then n = math.min(n, l.rate - l.rate_used - l.started) end
  return n
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
        redis.call('EXPIRE', rk, 120)
      end
    end
  end
end

-- The tenant to serve next at a level: the lowest virtual time with room. When the first has none, the
-- next SCAN are looked at; those without room are moved behind that window so they cannot hide others.
local function pick(ready)
  local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  if has_room(first[1]) then return first[1], tonumber(first[2]) end
  local cands = redis.call('ZRANGE', ready, 1, SCAN, 'WITHSCORES')
  local last = #cands > 0 and tonumber(cands[#cands]) or tonumber(first[2])
  if #cands >= SCAN * 2 then redis.call('ZADD', ready, 'XX', last + 1e-6, first[1]) end
  for i = 1, #cands, 2 do
    if has_room(cands[i]) then return cands[i], tonumber(cands[i + 1]) end
    if #cands >= SCAN * 2 then redis.call('ZADD', ready, 'XX', last + 1e-6 * (i + 1), cands[i]) end
  end
  return false
end

if mode == 'next' then
  for k = 1, #KEYS do
    if want <= 0 then break end
    local ready = prefix .. 'ready:' .. k
    local taken = {}
    local served = nil
    local emptied = false
    local guard = 0
    while want > 0 and guard < 4 * (want + SCAN) do
      guard = guard + 1
      local tenant, score = pick(ready)
      if not tenant then break end
      local backlog = prefix .. 'backlog:' .. k .. ':' .. tenant
      local l = limits(tenant)
      local asked = math.min(QUANTUM, want, room(l))
      local ids = redis.call('LPOP', backlog, asked) or {}
      local got = 0
      for _, id in ipairs(ids) do
        local st = redis.call('HMGET', exec_prefix .. id, 'status', 'priority', 'workflow_id')
        -- Entries left behind by a cancel or a priority change are skipped here (lazy removal).
        local live = st[1] == 'queued' and tonumber(st[2]) == k
        if live and workflow_paused(st[3]) then
          redis.call('RPUSH', prefix .. 'parked:' .. st[3], id)
          live = false
        end
        if live then
          local entry_id = redis.call('XADD', KEYS[k], '*', 'e', id, 't', tenant)
          redis.call('HSET', exec_prefix .. id, 'work_stream', KEYS[k], 'work_id', entry_id)
          taken[#taken + 1] = {entry_id, id}
          got = got + 1
        end
      end
      if got > 0 then
        l.started = l.started + got
        want = want - got
        served = score
      end
      -- A short pop emptied the backlog; a full one may have too.
      if #ids < asked or redis.call('LLEN', backlog) == 0 then
        redis.call('ZREM', ready, tenant)
        emptied = true
      elseif got > 0 then
        redis.call('ZADD', ready, 'XX', score + got / l.weight, tenant)
      end
    end
    if emptied and redis.call('ZCARD', ready) == 0 then redis.call('ZREM', prefix .. 'levels', k) end
    if #taken > 0 then
      -- Only this call adds entries, and it delivers them at once: the new ones are all there is to read.
      redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', #taken, 'STREAMS', KEYS[k], '>')
      redis.call('SET', prefix .. 'vt:' .. k, served)
      for _, t in ipairs(taken) do load(k, t[1], t[2], '') end
    end
  end
  flush_counts()
elseif mode == 'due' then
  for k = 1, #KEYS do
    if want <= 0 then break end
    local pending = redis.call('XPENDING', KEYS[k], group, '-', '+', 100, 'backoff')
    for _, p in ipairs(pending) do
      if want <= 0 then break end
      local entry = redis.call('XRANGE', KEYS[k], p[1], p[1])
      if #entry == 0 then
        redis.call('XACK', KEYS[k], group, p[1])  -- its body is gone: nothing left to run
      else
        local exec_id, tenant = field(entry[1][2], 'e'), field(entry[1][2], 't')
        local delay = tonumber(redis.call('HGET', exec_prefix .. exec_id, 'retry_delay') or '0')
        if p[3] >= delay and has_room(tenant) then
          redis.call('XCLAIM', KEYS[k], group, consumer, 0, p[1], 'JUSTID')
          local l = limits(tenant)
          l.started = l.started + 1
          load(k, p[1], exec_id, 'backoff')
          want = want - 1
        end
      end
    end
  end
  flush_counts()
elseif mode == 'expired' then
  for k = 1, #KEYS do
    if want <= 0 then break end
    local pending = redis.call('XPENDING', KEYS[k], group, 'IDLE', min_idle, '-', '+', 100)
    for _, p in ipairs(pending) do
      if want <= 0 then break end
      local owner = p[2]
      if owner ~= consumer and owner ~= 'backoff' and owner ~= 'throttled' then
        local claimed = redis.call('XCLAIM', KEYS[k], group, consumer, min_idle, p[1])
        if #claimed > 0 and claimed[1] then
          load(k, p[1], field(claimed[1][2], 'e'), owner)
          want = want - 1
        elseif #claimed > 0 then
          redis.call('XACK', KEYS[k], group, p[1])  -- deleted entry: nothing left to run
        end
      end
    end
  end
end
return out
