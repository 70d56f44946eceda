-- rollback.lua: with min_replicas_ack, a grant that WAIT did not confirm is undone:
-- the lease ends (if it is still the one just granted) and the lock is handed on.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   lease id of the unconfirmed grant
--
-- Reply (JSON): r = 'ok' or 'none'; plus ev/ho/now.

local sk, lease = ARGV[7], ARGV[8]
local l = read_lock(sk)
if not l or lease == '' or l.lease ~= lease then return reply({ r = 'none' }) end
release(sk, l, 'lock.released')
return reply({ r = 'ok' })
