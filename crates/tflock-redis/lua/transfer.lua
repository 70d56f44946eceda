-- transfer.lua: TransferLock: the lock goes to a new owner with a new lease id and a
-- new fencing token; the old lease stops working.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   storage key
-- ARGV[8]   the holder's lease id, or '' for an admin transfer
-- ARGV[9]   new owner string
-- ARGV[10]   its username or ''
-- ARGV[11]  its pull number or ''
-- ARGV[12]  its metadata JSON
--
-- Reply (JSON): r = 'nf' (not locked), 'lost' (another lease), or 'ok' with lock
-- (with the new lease); plus ev/ho/now.

local sk, lease = ARGV[7], ARGV[8]
local l = settle(sk)
if not l then return reply({ r = 'nf' }) end
if lease ~= '' and l.lease ~= lease then return reply({ r = 'lost' }) end
if l.entry ~= '' then redis.call('DEL', k_wake(l.entry)) end
local token = redis.call('INCR', k_token(sk))
redis.call('ZADD', K_TIDX, 0, sk)
l.owner, l.user, l.pull, l.meta = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
l.token = fmt(token)
l.lease = new_id(32)
l.acquired = fmt(NOW)
l.expires = fmt(NOW + tonumber(l.ttl))
l.claim = '0'
l.entry = ''
l.rid = ''
redis.call('HSET', k_lock(sk),
  'owner', l.owner, 'user', l.user, 'pull', l.pull, 'meta', l.meta, 'token', l.token,
  'lease', l.lease, 'acquired', l.acquired, 'expires', l.expires, 'claim', '0',
  'entry', '', 'rid', '')
redis.call('ZADD', K_DUE, l.expires, sk)
emit('lock.transferred', sk, l.owner, l.token, nil)
return reply({ r = 'ok', lock = lock_view(sk, l, true) })
