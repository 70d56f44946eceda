-- list.lua: ListLocks on one bucket (read only): unexpired locks after a storage
-- key, in key order, filtered. The client merges the 64 buckets.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   start after this resource key ('' for the start)
-- ARGV[8]   most matches to return
-- ARGV[9]   repository filter, escaped as in a resource key (keys.rs key_part), or ''
-- ARGV[10]   owner filter or ''
-- ARGV[11]  username filter or ''
-- ARGV[12]  most index members to scan in this call
--
-- Reply (JSON): locks (public views, each as the list [sk, meta, prio, token,
-- acquired, expires, ttl, claim]: the fields of reply.rs RawLock in its order, which
-- serde reads from a list as from an object, without a name per field for cjson to
-- encode and Lua to hold), last = the last resource key scanned, done = true when
-- the bucket has nothing after `last`; plus ev/ho/now.

local after, want = ARGV[7], tonumber(ARGV[8])
local repo, owner, user = ARGV[9], ARGV[10], ARGV[11]
local cap = tonumber(ARGV[12])
-- Only the repository's keys when filtered: they start with the escaped repository
-- and KSEP ('!'), and sort below it and '"' (an escaped part holds neither).
local prefix = repo ~= '' and (repo .. KSEP) or ''
local min
if after ~= '' then min = '(' .. after
elseif repo ~= '' then min = '[' .. prefix
else min = '-' end
local max = repo ~= '' and ('(' .. repo .. '"') or '+'

local locks, scanned, last, done = {}, 0, nil, false
while #locks < want and scanned < cap do
  -- Without an owner or user filter every member of the range is a match but for a
  -- queue without a lock or a lease just expired: ask for about what is still
  -- wanted (a few more), not 200, each of which costs a string in Lua. With one,
  -- matches are sparser: the full 200.
  local batch = 200
  if owner == '' and user == '' then batch = want - #locks + 4 end
  batch = math.min(batch, 200, cap - scanned)
  local keys = redis.call('ZRANGEBYLEX', K_IDX, min, max, 'LIMIT', 0, batch)
  for _, sk in ipairs(keys) do
    scanned = scanned + 1
    last = sk
    if string.sub(sk, 1, #prefix) == prefix then
      -- Only the public view's fields (prelude lock_view) and the user filter's: a
      -- page reads thousands of locks, and every field read becomes a Lua string.
      local f = redis.call('HMGET', k_lock(sk),
        'owner', 'meta', 'prio', 'token', 'acquired', 'expires', 'ttl', 'claim', 'user')
      if f[1] and tonumber(f[6]) > NOW
        and (owner == '' or f[1] == owner) and (user == '' or f[9] == user) then
        locks[#locks + 1] = { sk, f[2], f[3], f[4], f[5], f[6], f[7], f[8] }
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
