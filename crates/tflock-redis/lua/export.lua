-- export.lua: Export on one bucket (read only): every resource that has a lock, a
-- queue or a token counter, in storage-key order after a cursor. The client pages
-- through each bucket and merges the 64.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   start after this resource key ('' for the start)
-- ARGV[8]   most resources to return
--
-- Reply (JSON): items = list of { sk, lock (with its lease; absent when free or
-- expired), entries (raw, every kind), token (last fencing token, '0' for none) },
-- done = true when the bucket has nothing after the last item; plus ev/ho/now.

local after, want = ARGV[7], tonumber(ARGV[8])
local min = '-'
if after ~= '' then min = '(' .. after end

-- Byte order, as ZRANGEBYLEX sorts (Lua's `<` on strings follows the locale).
local function bytes_lt(x, y)
  local n = math.min(#x, #y)
  for p = 1, n do
    local cx, cy = string.byte(x, p), string.byte(y, p)
    if cx ~= cy then return cx < cy end
  end
  return #x < #y
end

-- Resources with a lock or a queue (idx) and those with a token (tidx) overlap;
-- merge the two sorted lists without repeats. Neither list is read past its own
-- last member, so the next page, after the last key returned, misses nothing.
local a = redis.call('ZRANGEBYLEX', K_IDX, min, '+', 'LIMIT', 0, want)
local b = redis.call('ZRANGEBYLEX', K_TIDX, min, '+', 'LIMIT', 0, want)
local keys = {}
local i, j = 1, 1
while #keys < want and (a[i] or b[j]) do
  local x, y = a[i], b[j]
  if y == nil or (x ~= nil and x ~= y and bytes_lt(x, y)) then
    keys[#keys + 1] = x
    i = i + 1
  elseif x == nil or x ~= y then
    keys[#keys + 1] = y
    j = j + 1
  else
    keys[#keys + 1] = x
    i = i + 1
    j = j + 1
  end
end

local items = {}
for _, sk in ipairs(keys) do
  local item = { sk = sk, entries = all_entries(sk), token = redis.call('GET', k_token(sk)) or '0' }
  local l = read_lock(sk)
  if l and tonumber(l.expires) > NOW then item.lock = lock_view(sk, l, true) end
  items[#items + 1] = item
end
return reply({ items = items, done = #keys < want })
