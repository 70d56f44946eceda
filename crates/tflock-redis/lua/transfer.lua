-- transfer.lua: TransferLock: the lock goes to a new owner with a new lease id and a
-- new fencing token; the old lease stops working.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   mode: 'lease' (the holder, by ARGV[9]) or 'admin'. Any other mode is
--           refused: an empty lease id never means admin.
-- ARGV[9]   the holder's lease id ('lease'); ignored for 'admin'
-- ARGV[10]  new owner string
-- ARGV[11]  its username or ''
-- ARGV[12]  its pull number or ''
-- ARGV[13]  its metadata JSON
--
-- Reply (JSON): r = 'nf' (not locked), 'lost' (another lease), or 'ok' with lock
-- (with the new lease); plus ev/ho/now.

local sk, mode, lease = ARGV[7], ARGV[8], ARGV[9]
if mode ~= 'lease' and mode ~= 'admin' then
  return redis.error_reply('transfer.lua: unknown mode ' .. tostring(mode))
end
local l = settle(sk)
if not l then return reply({ r = 'nf' }) end
if mode == 'lease' and (lease == '' or l.lease ~= lease) then return reply({ r = 'lost' }) end
if l.entry ~= '' then redis.call('DEL', k_wake(l.entry)) end
local token = next_token(sk)
l.owner, l.user, l.pull, l.meta = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
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
delivered(sk)
emit('lock.transferred', sk, l.owner, l.token, nil)
return reply({ r = 'ok', lock = lock_view(sk, l, true) })
