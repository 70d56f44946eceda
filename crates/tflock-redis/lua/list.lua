-- list.lua: ListLocks on one bucket (read only): unexpired locks after a storage
-- key, in key order, filtered. The client merges the 64 buckets.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   start after this storage key ('' for the start)
-- ARGV[8]   most matches to return
-- ARGV[9]   repository filter or ''
-- ARGV[10]   owner filter or ''
-- ARGV[11]  username filter or ''
-- ARGV[12]  most index members to scan in this call
--
-- Reply (JSON): locks (public, each with sk), last = the last storage key scanned,
-- done = true when the bucket has nothing after `last`; plus ev/ho/now.

local after, want = ARGV[7], tonumber(ARGV[8])
local repo, owner, user = ARGV[9], ARGV[10], ARGV[11]
local cap = tonumber(ARGV[12])
-- Only the repository's keys when filtered: they start with repo SEP and sort below
-- repo '\32' (no part holds a control character).
local prefix = repo ~= '' and (repo .. SEP) or ''
local min
if after ~= '' then min = '(' .. after
elseif repo ~= '' then min = '[' .. prefix
else min = '-' end
local max = repo ~= '' and ('(' .. repo .. '\32') or '+'

local locks, scanned, last, done = {}, 0, nil, false
while #locks < want and scanned < cap do
  local batch = math.min(200, cap - scanned)
  local keys = redis.call('ZRANGEBYLEX', K_IDX, min, max, 'LIMIT', 0, batch)
  for _, sk in ipairs(keys) do
    scanned = scanned + 1
    last = sk
    if string.sub(sk, 1, #prefix) == prefix then
      local l = read_lock(sk)
      if l and tonumber(l.expires) > NOW
        and (owner == '' or l.owner == owner) and (user == '' or l.user == user) then
        locks[#locks + 1] = lock_view(sk, l, false)
        if #locks >= want then break end
      end
    end
  end
  if #locks < want and #keys < batch then
    done = true
    break
  end
  if last then min = '(' .. last end
end
return reply({ locks = locks, last = last or '', done = done })
