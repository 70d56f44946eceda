-- get_lock.lua: GetLock (read only): the holder's public view unless expired.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
--
-- Reply (JSON): lock (public) or nothing; plus ev/ho/now.

local sk = ARGV[7]
local l = read_lock(sk)
if l and tonumber(l.expires) > NOW then
  return reply({ lock = lock_view(sk, l, false) })
end
return reply({})
