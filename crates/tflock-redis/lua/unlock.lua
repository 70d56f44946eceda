-- unlock.lua: Unlock by the holder's lease, or ForceUnlock; hands the lock to the
-- next entry in the same step, so it is never observably free while one waits.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   storage key
-- ARGV[8]   lease id, or '' to unlock whoever holds it (admin)
--
-- Reply (JSON): r = 'nf' (not locked), 'no' (another lease), or 'ok' with
-- released = the ended lock (public) and to = the entry it went to; plus ev/ho/now.

local sk, lease = ARGV[7], ARGV[8]
local l = settle(sk)
if not l then return reply({ r = 'nf' }) end
if lease ~= '' and l.lease ~= lease then return reply({ r = 'no' }) end
local to = release(sk, l, 'lock.released')
return reply({ r = 'ok', released = lock_view(sk, l, false), to = to })
