-- Apply a batch of atomic units to one partition.
-- KEYS[1] (then, last, the partition's slot guard: never written, see shared/log/keys.py): the partition's log
-- stream (routes the call to the partition's slot; every key touched carries the same hash tag). ARGV[1]: msgpack list of units; a unit is {guards, ops}.
-- Each unit either applies all its ops or none (a failed guard skips it); one unit's failure never
-- affects another. Result per unit: {1, log ids...} | {0, label, actual} | {2, stored idempotent reply}.
-- An op kind no one defines fails the whole call, before anything is written.

-- Op kinds other than the generic ones below are looked up in OPS: the domain op libraries (commit_ops_*.lua,
-- composed by shared/domain/commit_script.py) register there, each OPS[kind] = function(op, ids). Committer puts
-- their sources in place of the marker line that follows, each in its own do ... end.
local OPS = {}
--@libraries

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

-- The generic ops: GENERIC[kind](op, ids), op with its binary arguments resolved; ids collects the unit's
-- result ids (after the leading 1).
local GENERIC = {}
GENERIC['log'] = function(op, ids)
  ids[#ids + 1] = redis.call('XADD', op[2], '*', 't', op[3], 'd', op[4])
end
GENERIC['hset'] = function(op) redis.call('HSET', unpack(op, 2)) end
GENERIC['hsetnx'] = function(op) redis.call('HSETNX', op[2], op[3], op[4]) end
GENERIC['hincrby'] = function(op) redis.call('HINCRBY', op[2], op[3], op[4]) end
GENERIC['hdel'] = function(op) redis.call('HDEL', unpack(op, 2)) end
GENERIC['ring'] = function(op)
  -- {ring, bell stream}: wake idle consumers; the bell keeps one entry.
  redis.call('XADD', op[2], 'MAXLEN', '1', '*', 'n', '1')
end
GENERIC['xadd'] = function(op)
  -- {xadd, stream, ref key or '', ref field, field, value, ...}
  local id = xadd_fields(op[2], op, 5)
  if op[3] ~= '' then redis.call('HSET', op[3], op[4], id) end
end
GENERIC['xdel_ref'] = function(op)
  -- {xdel_ref, stream, hash key, field}: delete the entry whose id the hash recorded, and forget it.
  local id = redis.call('HGET', op[3], op[4])
  if id then
    redis.call('XDEL', op[2], id)
    redis.call('HDEL', op[3], op[4])
  end
end
GENERIC['xack'] = function(op)
  redis.call('XACK', op[2], op[3], op[4])
  if op[5] == 1 then redis.call('XDEL', op[2], op[4]) end
end
GENERIC['xclaim'] = function(op) redis.call('XCLAIM', op[2], op[3], op[4], 0, op[5], 'JUSTID') end
GENERIC['set'] = function(op)
  if op[4] > 0 then redis.call('SET', op[2], op[3], 'EX', op[4]) else redis.call('SET', op[2], op[3]) end
end
GENERIC['incrby'] = function(op)
  redis.call('INCRBY', op[2], op[3])
  -- Set the TTL only the first time (EXPIRE's NX flag needs Redis 7; the embedded fallback is 6.2).
  if op[4] > 0 and redis.call('TTL', op[2]) == -1 then redis.call('EXPIRE', op[2], op[4]) end
end
GENERIC['del'] = function(op) redis.call('DEL', op[2]) end
GENERIC['persist'] = function(op) redis.call('PERSIST', op[2]) end
GENERIC['publish'] = function(op) redis.call('PUBLISH', op[2], op[3]) end
GENERIC['zadd'] = function(op) redis.call('ZADD', op[2], op[3], op[4]) end
GENERIC['zrem'] = function(op) redis.call('ZREM', op[2], unpack(op, 3)) end

local function apply(op, ids, base)
  for i = 2, #op do
    if type(op[i]) == 'table' then op[i] = ARGV[base + op[i][1]] end
  end
  local fn = GENERIC[op[1]] or OPS[op[1]]  -- known: every kind was checked before the first write
  fn(op, ids)
end

-- Every op kind is known before anything is written: Redis keeps a script's writes made before an error, so
-- an op no library defines (a library missing from this Committer) must fail the call while it is untouched.
for u = 1, #units do
  for _, op in ipairs(units[u][2]) do
    if not (GENERIC[op[1]] or OPS[op[1]]) then error('unknown op ' .. tostring(op[1])) end
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
