-- unlock.lua: Unlock by the holder's lease, or ForceUnlock; hands the lock to the
-- next entry in the same step, so it is never observably free while one waits.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   mode: 'lease' (the holder, by ARGV[9]) or 'force' (admin). Any other
--           mode is refused: an empty lease id never means force.
-- ARGV[9]   lease id ('lease'); ignored for 'force'
-- ARGV[10]  'force' only: the fencing token the admin saw, or '' for whoever holds
--           it; checked in this same step as the release
--
-- Reply (JSON): r = 'nf' (not locked), 'no' (another lease), 'changed' (held with
-- another token: cur = that token), or 'ok' with released = the ended lock (public)
-- and to = the entry it went to; plus ev/ho/now.

local sk, mode, lease, expected = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
if mode ~= 'lease' and mode ~= 'force' then
  return redis.error_reply('unlock.lua: unknown mode ' .. tostring(mode))
end
local l = settle(sk)
if not l then return reply({ r = 'nf' }) end
if mode == 'lease' and (lease == nil or lease == '' or l.lease ~= lease) then
  return reply({ r = 'no' })
end
if mode == 'force' and expected ~= nil and expected ~= '' and l.token ~= expected then
  return reply({ r = 'changed', cur = l.token })
end
local to = release(sk, l, 'lock.released')
return reply({ r = 'ok', released = lock_view(sk, l, false), to = to })
