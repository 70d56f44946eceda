-- refresh.lua: RefreshLock: the holder's lease expires at now + ttl.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   lease id
-- ARGV[9]   ttl µs
--
-- Reply (JSON): r = 'lost', or 'ok' with lock (with lease); plus ev/ho/now.

local sk, lease, ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local l = settle(sk)
if not l or lease == '' or l.lease ~= lease then return reply({ r = 'lost' }) end
if l.entry ~= '' then redis.call('DEL', k_wake(l.entry)) end
l.expires = fmt(NOW + ttl)
l.ttl = fmt(ttl)
l.claim = '0'
l.entry = ''
redis.call('HSET', k_lock(sk), 'expires', l.expires, 'ttl', l.ttl, 'claim', '0', 'entry', '')
redis.call('ZADD', K_DUE, l.expires, sk)
delivered(sk)
return reply({ r = 'ok', lock = lock_view(sk, l, true) })
