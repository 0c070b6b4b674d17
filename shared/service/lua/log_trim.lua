-- Trim (or measure) a partition's log below what every reader has finished with (shared/service/maintenance.py).
-- KEYS[1]: the partition's log. ARGV: bound id (projector checkpoint or minimum retention), what set it,
-- '1' to trim ('0': only compute the bound).
-- Lowers the bound to every consumer group's first unacknowledged entry (its oldest pending entry, else its
-- last delivered one), then trims below it when asked, in one call so no group falls behind in between.
-- Result: {bound, what set it, entries removed}; {bound, 'no stream', 0} when the log does not exist.

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {ARGV[1], 'no stream', 0} end
local bound, by = ARGV[1], ARGV[2]
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local summary = redis.call('XPENDING', KEYS[1], name)
  local first_unacked = last
  if summary[1] > 0 then first_unacked = summary[2] end
  if less(first_unacked, bound) then
    bound = first_unacked
    by = 'group ' .. name
  end
end
local removed = 0
if ARGV[3] == '1' then removed = redis.call('XTRIM', KEYS[1], 'MINID', '=', bound) end
return {bound, by, removed}
