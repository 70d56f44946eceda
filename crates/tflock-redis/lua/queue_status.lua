-- queue_status.lua: GetQueueStatus (read only): the unexpired holder and every
-- entry. The client orders the entries (tflock_core::queue) at the reply's `now`.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
--
-- Reply (JSON): lock (public) or nothing, entries = raw entries; plus ev/ho/now.

local sk = ARGV[7]
local l = read_lock(sk)
local r = { entries = all_entries(sk) }
if l and tonumber(l.expires) > NOW then r.lock = lock_view(sk, l, false) end
return reply(r)
