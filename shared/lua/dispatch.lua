-- Hand work entries of one partition to an executor and load what it needs to run them, in one call.
-- KEYS[1..10]: the partition's work streams, priority 1 (highest) first.
-- ARGV: mode, group, consumer, count, execution key prefix, min idle ms (mode 'expired'), then for mode
-- 'take' triples of (key index, entry id, execution id) already delivered to the consumer.
-- Modes:
--   next    - new entries from the lowest-numbered non-empty stream first, up to count;
--   due     - entries parked on the 'backoff' consumer whose idle time reached their retry delay;
--   expired - entries of other live-looking consumers idle past the lease (their executor died);
--   take    - entries this consumer already holds (after a blocking read).
-- Result: list of {key index, entry id, execution id, flat execution hash, pinned definition, previous owner}.

local mode, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local want = tonumber(ARGV[4])
local exec_prefix = ARGV[5]
local min_idle = tonumber(ARGV[6])
local out = {}

local function load(k, entry_id, exec_id, previous)
  local state = redis.call('HGETALL', exec_prefix .. exec_id)
  local def = false
  for i = 1, #state, 2 do
    if state[i] == 'def_key' then def = redis.call('GET', state[i + 1]) end
  end
  out[#out + 1] = {k, entry_id, exec_id, state, def or '', previous}
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

if mode == 'next' then
  for k = 1, #KEYS do
    if want <= 0 then break end
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want, 'STREAMS', KEYS[k], '>')
    if reply then
      for _, entry in ipairs(reply[1][2]) do
        load(k, entry[1], field(entry[2], 'e'), '')
        want = want - 1
      end
    end
  end
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
        local exec_id = field(entry[1][2], 'e')
        local delay = tonumber(redis.call('HGET', exec_prefix .. exec_id, 'retry_delay') or '0')
        if p[3] >= delay then
          redis.call('XCLAIM', KEYS[k], group, consumer, 0, p[1], 'JUSTID')
          load(k, p[1], exec_id, 'backoff')
          want = want - 1
        end
      end
    end
  end
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
        elseif #claimed == 0 then
          -- nothing claimed: another executor won the race
        else
          redis.call('XACK', KEYS[k], group, p[1])  -- deleted entry: nothing left to run
        end
      end
    end
  end
elseif mode == 'take' then
  for i = 7, #ARGV, 3 do
    load(tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], '')
  end
end
return out
